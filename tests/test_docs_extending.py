"""The recipes of docs/extending.md run as written.

Each ```python block of the page whose first line is ``# file: NAME.py`` is a complete file:
it is saved to a temporary folder and run there in a fresh interpreter (its own ``assert``s
are the checks). Each ```bash block whose first line is ``# run next to NAME.py`` is then run
in that folder, command by command, through ``python -m scoresde`` (a line ``python NAME.py``
is the recipe itself, already run). Subprocesses keep the registrations of the recipes out
of this test session.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
FILE_MARK = re.compile(r"# file: (\w+\.py)\n")
CLI_MARK = re.compile(r"# run next to (\w+\.py)\n")


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(DOC.read_text()) if kind == lang]


def _recipes() -> dict[str, str]:
    out = {}
    for body in _blocks("python"):
        m = FILE_MARK.match(body)
        if m:
            assert m.group(1) not in out, f"two recipes named {m.group(1)}"
            out[m.group(1)] = body
    return out


def _cli_examples() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for body in _blocks("bash"):
        m = CLI_MARK.match(body)
        if m:
            lines = [ln for ln in body[m.end():].splitlines() if ln.strip()]
            out.setdefault(m.group(1), []).extend(lines)
    return out


RECIPES = _recipes()
CLI = _cli_examples()


def _run(argv: list[str], folder: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    path = [str(folder), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                       else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(path))
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _explain(what: str, proc: subprocess.CompletedProcess) -> str:
    return (f"{what} exited with {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n"
            f"--- stderr ---\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """`ran(name)` runs the recipe `name` once per module, in a folder of its own, and returns
    `(folder, completed process)`."""
    cache: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def run(name: str) -> tuple[Path, subprocess.CompletedProcess]:
        if name not in cache:
            folder = tmp_path_factory.mktemp(name.removesuffix(".py"))
            (folder / name).write_text(RECIPES[name])
            cache[name] = (folder, _run([sys.executable, name], folder))
        return cache[name]

    return run


def test_the_page_has_a_recipe_per_extension_point():
    assert set(RECIPES) == {"my_net.py", "my_sde.py", "my_solver.py", "my_metric.py"}
    registrations = {"my_net.py": "@sd.register_net(", "my_sde.py": "@sd.register_sde(",
                     "my_solver.py": "@sd.register_solver(",
                     "my_metric.py": "sd.metrics.register_metric("}
    for name, code in RECIPES.items():
        assert registrations[name] in code, name
        assert "\n    assert " in code, f"{name} checks nothing"   # its checks can fail
        compile(code, name, "exec")
    # every command-line example belongs to a recipe and imports it
    assert set(CLI) <= set(RECIPES) and {"my_net.py", "my_metric.py"} <= set(CLI)
    for name, lines in CLI.items():
        assert any(f"--import {name}" in ln for ln in lines), name


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_as_written(name, ran):
    _, proc = ran(name)
    assert proc.returncode == 0, _explain(f"python {name}", proc)


@pytest.mark.parametrize("name", sorted(CLI))
def test_cli_import_example_runs_as_written(name, ran):
    folder, proc = ran(name)
    assert proc.returncode == 0, _explain(f"python {name}", proc)
    outs = []
    for line in CLI[name]:
        argv = shlex.split(line, comments=True)
        if not argv or argv == ["python", name]:
            continue                                  # the recipe itself: run by the fixture
        assert argv[0] == "scoresde" and "--import" in argv, line
        proc = _run([sys.executable, "-m", "scoresde", *argv[1:]], folder)
        assert proc.returncode == 0, _explain(line, proc)
        assert "--out" in argv, line
        outs.append((argv, folder / argv[argv.index("--out") + 1]))
    assert outs, f"no scoresde command next to {name}"
    for argv, out in outs:
        assert out.is_dir() and any(out.iterdir()), f"{out} is empty after {argv}"
        if "sample" in argv:
            assert (out / "samples.npz").is_file()
        if "compare" in argv:
            with open(out / "results.csv") as f:
                header = next(csv.reader(f))
            assert {"sw2", "mmd", "energy"} <= set(header)
            if name == "my_metric.py":                # the registered metric is a column
                assert {"radial_w1", "radial_w1_floor", "radial_w1_ratio"} <= set(header)
                assert (out / "error_vs_nfe_radial_w1.png").is_file()
