"""The command line and the comparison engine: outputs on disk, one-line errors, exit codes,
interrupted runs keep their rows."""

import json
import re

import pytest
import torch

import scoresde as sd
from scoresde import cli
from scoresde.evaluation.compare import Comparison, SolverSpec, builtin_target, compare


def _run(argv, capsys):
    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_compare_writes_tables_plots_and_marks_unreachable_budgets(tmp_path):
    solvers = ["euler_maruyama", "ddim", "heun", "pc", "pf_ode:adaptive=1,rtol=1e-3,atol=1e-3"]
    comp = compare(builtin_target("mixture2d"), solvers, [4, 5, 8], n=300, seed=1,
                   out_dir=tmp_path, floor_repeats=3, progress=False, command="test",
                   budget_mode="exact", replicates=3)
    rows = comp.rows
    assert len(rows) == 1 + 4 * 3
    by = {(r["solver"], r["budget"]): r for r in rows}
    # heun costs 2n - 1 (+1 denoising): odd totals are unreachable and shown as such
    assert by[("heun", 5)]["status"] == "unreachable"
    assert "nearest budgets" in by[("heun", 5)]["message"]
    assert by[("pc", 5)]["status"] == "ok" and by[("pc", 4)]["status"] == "unreachable"
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["nfe"] == r["budget"] for r in ok if not r["adaptive"])
    for r in ok:
        assert r["sw2"] > 0 and r["sw2_floor"] > 0 and "avg_logp" in r and "cov_error" in r
        assert r["sw2_lo"] <= r["sw2"] <= r["sw2_hi"] and "ksd" in r and "logp_gap" in r
        assert ("pathwise" in r) == (r["name"] in ("ddim", "heun", "pf_ode"))
    for f in ("rows.jsonl", "results.csv", "replicates.csv", "results.json", "report.md",
              "error_vs_nfe_sw2.png", "error_vs_nfe_mmd.png", "error_vs_nfe_energy.png",
              "error_vs_nfe_pathwise.png", "error_vs_nfe_ksd.png", "samples_grid.png",
              "trajectories.png"):
        assert (tmp_path / f).is_file(), f
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["seed"] == 1 and saved["config"]["command"] == "test"
    assert saved["config"]["replicates"] == 3 and len(saved["replicates"]) == 3 * (1 + len(ok))
    assert "torch" in saved["config"]["versions"] and saved["reference"]["nfe"] > 0
    report = (tmp_path / "report.md").read_text()
    for part in ("noise floor", "| heun |", "—", "Verdict", "Paired differences", "pathwise",
                 "Stein", "replicates"):
        assert part in report, part
    assert isinstance(comp, Comparison) and set(comp.winners()) <= {4, 5, 8}


def test_compare_errors_shrink_with_budget_on_exact_target():
    comp = compare(builtin_target("mixture2d"), ["ddim"], [3, 40], n=1000, seed=0,
                   floor_repeats=3, replicates=2, progress=False)
    small, large = comp.rows
    assert large["cov_error"] < 0.25 * small["cov_error"]
    assert large["sw2"] < 0.25 * small["sw2"]
    assert abs(large["avg_logp"] - comp.config["target_avg_logp"]) < \
        abs(small["avg_logp"] - comp.config["target_avg_logp"])
    assert large["sw2_ratio"] < 3.0
    assert large["pathwise"] < 0.1 * small["pathwise"] and large["ksd"] < small["ksd"]


def test_interrupt_keeps_finished_rows(tmp_path, monkeypatch):
    import scoresde.evaluation.compare as cmp

    calls = {"n": 0}
    real = cmp.sample

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cmp, "sample", flaky)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt) as info:
        compare(builtin_target("mixture2d"), ["ddim", "euler_maruyama"], [4, 8], n=100,
                out_dir=out, floor_repeats=2, progress=False, pathwise=False)
    # the finished rows are kept, clearly named, and the output folder itself is untouched
    assert not out.exists()
    (partial,) = tmp_path.glob("out.interrupted-*")
    assert any(str(partial) in note for note in info.value.__notes__)
    lines = (partial / "rows.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["status"] == "ok"
    assert (partial / "results.csv").is_file() and not (partial / "report.md").exists()


def test_solver_spec_parsing():
    s = SolverSpec.parse("ddim:eta=0.5,grid=logsnr")
    assert s.options == {"eta": 0.5} and s.grid == "logsnr" and s.label == "ddim[eta=0.5,grid=logsnr]"
    assert SolverSpec.parse("pf_ode:adaptive=1").adaptive
    with pytest.raises(ValueError, match="unknown solver"):
        SolverSpec.parse("nope")
    with pytest.raises(TypeError, match="unknown option"):
        SolverSpec.parse("ddim:etta=1")
    with pytest.raises(ValueError, match="no adaptive mode"):
        SolverSpec.parse("ddim:adaptive=1")


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    cases = [
        ["compare", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")],
        ["compare", "--solvers", "warp_drive", "--out", str(tmp_path / "o")],
        ["compare", "--nfe", "1", "--out", str(tmp_path / "o")],
        ["compare", "--out", str(f)],
        ["compare", "--target", "nope", "--out", str(tmp_path / "o")],
        ["compare", "--replicates", "1", "--out", str(tmp_path / "o")],
        ["compare", "--grids", "nope", "--out", str(tmp_path / "o")],
        ["compare", "--solvers", "ddim", "ddim", "--out", str(tmp_path / "o")],
        ["sample", "--checkpoint", str(f)],
    ]
    for argv in cases:
        code, out, err = _run(argv, capsys)
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("scoresde: error:"), (argv, err)
        assert "Traceback" not in err


def test_train_sample_likelihood_round_trip(tmp_path, capsys):
    code, out, _ = _run(["train", "--data", "moons", "--steps", "30", "--hidden", "16",
                         "--depth", "1", "--out", str(tmp_path / "t"), "--no-progress"], capsys)
    assert code == 0 and (tmp_path / "t" / "model.pt").is_file()
    assert (tmp_path / "t" / "loss.png").is_file() and (tmp_path / "t" / "score_field.png").is_file()
    ck = sd.load_checkpoint(tmp_path / "t" / "model.pt")
    assert ck["meta"]["data"] == "moons" and ck["step"] == 30
    code, out, _ = _run(["sample", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--solver",
                         "ddim", "--nfe", "6", "--num-samples", "50", "--out", str(tmp_path / "s"),
                         "--no-progress"], capsys)
    assert code == 0
    import numpy as np

    z = np.load(tmp_path / "s" / "samples.npz")
    assert z["x"].shape == (50, 2) and int(z["nfe"]) == 6
    code, out, _ = _run(["likelihood", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--num-samples",
                         "20", "--rtol", "1e-3", "--atol", "1e-3", "--out", str(tmp_path / "l"),
                         "--no-progress"], capsys)
    assert code == 0 and "NLL" in out
    vals = json.loads((tmp_path / "l" / "likelihood.json").read_text())
    assert vals["nfe"] > 0 and torch.isfinite(torch.tensor(vals["nll"]))


def test_cli_compare_replicates_grids_and_budget_modes(tmp_path, capsys):
    argv = ["compare", "--target", "mixture2d", "--solvers", "ddim", "heun", "--nfe", "7",
            "--grids", "uniform", "logsnr", "--num-samples", "60", "--replicates", "2",
            "--floor-repeats", "2", "--no-progress", "--out", str(tmp_path / "a")]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "heun[grid=logsnr]" in out and "(6)" in out and "Verdict" in out
    assert "solver x grid" in out and "—" not in out.split("Verdict")[0]
    rows = json.loads((tmp_path / "a" / "results.json").read_text())["rows"]
    assert {r["nfe"] for r in rows if r["name"] == "heun"} == {6}
    code, out, err = _run(argv[:-1] + [str(tmp_path / "b"), "--budget-mode", "exact",
                                       "--no-pathwise"], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert {r["status"] for r in rows if r["name"] == "heun"} == {"unreachable"}
    assert all("pathwise" not in r for r in rows)


def test_demo_quick(tmp_path, capsys):
    code, out, _ = _run(["demo", "--quick", "--out", str(tmp_path), "--no-progress"], capsys)
    assert code == 0
    assert (tmp_path / "report.md").is_file() and (tmp_path / "exact" / "report.md").is_file()
    assert (tmp_path / "trained" / "samples_grid.png").is_file()
    assert "report:" in out and "NLL" in out and "()" not in out
    # every solver has a value in every column ("at most K" budgets), with intervals
    assert "—" not in out and "±" in out and "Verdict" in out
    report = (tmp_path / "report.md").read_text()
    assert not re.search(r"\|\s*—\s*\|", report) and "pathwise" in report
