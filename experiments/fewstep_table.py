"""Few-step accuracy of the deterministic solvers: every solver x time grid at NFE 5-50.

On exact Gaussian-mixture targets (VP-SDE, zero model error, float64), from one shared x_T
(1000 draws), the pathwise error E||x - x_ref|| of the denoised sample against x_ref, the
denoised end point of a tight dopri5 solve of the PF-ODE (rtol = atol = 1e-10) from the same
x_T. Each solver takes the largest budget <= K it can meet exactly ("at most K", the final
denoising step included). Writes the "fewstep" section of docs/solvers.md and prints it.

    python experiments/fewstep_table.py            # both targets (about 10 min, 1 thread)
    python experiments/fewstep_table.py --n 200    # quicker
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde.evaluation.targets import builtin_target
from scoresde.samplers import GRIDS, PolyExponentialGrid, get_grid, make_solver

ROOT = Path(__file__).resolve().parents[1]
SOLVERS_MD = ROOT / "docs" / "solvers.md"
BUDGETS = (5, 8, 10, 15, 20, 50)
TARGETS = ("eight_gaussians", "mixture5d")
#: (label, solver, options): every deterministic solver, the new ones with their defaults first
#: and then the options that change them (lof = lower_order_final)
CASES = [
    ("ddim", "ddim", {}),
    ("dpm_solver (2M)", "dpm_solver", {}),
    ("dpm_solver_3m", "dpm_solver_3m", {}),
    ("dpm_solver_3m lof=False", "dpm_solver_3m", {"lower_order_final": False}),
    ("dpm_solver_3m taylor", "dpm_solver_3m", {"second_difference": "taylor"}),
    ("unipc", "unipc", {}),
    ("unipc lof=False", "unipc", {"lower_order_final": False}),
    ("unipc bh1", "unipc", {"variant": "bh1"}),
    ("unipc eps", "unipc", {"prediction": "eps"}),
    ("unipc p=1", "unipc", {"solver_order": 1}),
    ("unipc p=3", "unipc", {"solver_order": 3}),
    ("unipc p=3 eps", "unipc", {"solver_order": 3, "prediction": "eps"}),
    ("deis 2", "deis", {"solver_order": 2}),
    ("deis", "deis", {}),
    ("ipndm 2", "ipndm", {"solver_order": 2}),
    ("ipndm 3", "ipndm", {"solver_order": 3}),
    ("ipndm", "ipndm", {}),
    ("dpm_solver_singlestep 2", "dpm_solver_singlestep", {"solver_order": 2}),
    ("dpm_solver_singlestep", "dpm_solver_singlestep", {}),
    ("heun", "heun", {}),
    ("pf_ode rk4", "pf_ode", {"method": "rk4"}),
]
#: the grids compared: every registered rule, with polyexponential at rho = 2 (rho = 1 is logsnr)
GRID_CASES = [(name, get_grid(name)) for name in GRIDS if name != "polyexponential"]
GRID_CASES.append(("polyexp(2)", PolyExponentialGrid(2.0)))


def provenance() -> str:
    cmd = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).resolve().relative_to(ROOT)),
                                                      *sys.argv[1:]])
    return (f"Reproduce: `{cmd}` (scoresde {sd.__version__}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), {time.strftime('%Y-%m-%d')}).")


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between `<!-- BEGIN name -->` and `<!-- END name -->` in ``path``
    (appending the section if it is not there yet)."""
    text = path.read_text()
    block = f"<!-- BEGIN {name} -->\n{body.strip()}\n<!-- END {name} -->"
    pat = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def measure(target: str, n: int, seed: int, sde: sd.SDE | None = None, cases: list | None = None,
            budgets: tuple[int, ...] = BUDGETS, grids: list | None = None) -> dict:
    """errors[(label, grid)][K] = (error, nfe used) on one target (VP-SDE unless ``sde``
    is given; ``cases``, ``budgets`` and ``grids`` default to this table's)."""
    sde = sd.VPSDE() if sde is None else sde
    model = builtin_target(target, sde).model
    dim = builtin_target(target, sde).exact.dim
    x_T = sde.prior_sample((n, dim), torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = sd.sample(model, solver="pf_ode", nfe=None, x_T=x_T, rtol=1e-10, atol=1e-10).x
    out: dict = {}
    for label, name, opts in CASES if cases is None else cases:
        solver = make_solver(name, **opts)
        for gname, grid in GRID_CASES if grids is None else grids:
            row = out.setdefault((label, gname), {})
            for k in budgets:
                ok = solver.reachable(k, extra=1)
                if not ok:
                    continue
                res = sd.sample(model, solver=name, nfe=ok[-1], x_T=x_T, grid=grid, **opts)
                row[k] = (float((res.x - ref).norm(dim=1).mean()), res.nfe)
        print(f"  {target}: {label}", file=sys.stderr, flush=True)
    return out


def cell(v: tuple[float, int] | None, k: int, bold: bool = False) -> str:
    if v is None:
        return "—"
    s = f"{v[0]:.1e}" + (f" ({v[1]})" if v[1] != k else "")
    return f"**{s}**" if bold else s


def tables(target: str, errs: dict) -> tuple[list[str], list[str], dict]:
    """The summary (best grid per solver and budget) and the full solver x grid table."""
    head = "| solver | " + " | ".join(f"NFE {k}" for k in BUDGETS) + " |"
    sep = "| --- |" + " ---: |" * len(BUDGETS)
    best_at = {k: min((v[k][0] for v in errs.values() if k in v), default=None) for k in BUDGETS}
    summary, full, best_grid = [head, sep], [head.replace("solver |", "solver | grid |", 1),
                                            sep.replace("| --- |", "| --- | --- |", 1)], {}
    for label, _, _ in CASES:
        cells = []
        for k in BUDGETS:
            cands = [(errs[(label, g)][k], g) for g, _ in GRID_CASES if k in errs[(label, g)]]
            if not cands:
                cells.append("—")
                continue
            v, g = min(cands, key=lambda c: c[0][0])
            best_grid[(label, k)] = g
            cells.append(cell(v, k, v[0] == best_at[k]) + f" {g}")
        summary.append(f"| `{label}` | " + " | ".join(cells) + " |")
        for g, _ in GRID_CASES:
            row = errs[(label, g)]
            full.append(f"| `{label}` | {g} | " + " | ".join(
                cell(row.get(k), k, k in row and row[k][0] == best_at[k]) for k in BUDGETS) + " |")
    return summary, full, best_grid


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    parts = [
        "### Few-step accuracy, every solver on every grid", "",
        f"Pathwise error $\\mathbb E\\|x - x_\\text{{ref}}\\|$ of the denoised samples, {a.n} draws "
        "of $x_T$ shared by all runs, against the denoised end point of a dopri5 solve of the "
        "PF-ODE (rtol = atol = $10^{-10}$) from the same $x_T$; exact score of the target "
        "(zero model error), VP-SDE, $t_\\text{end} = 10^{-3}$, float64. `NFE K` counts every "
        "evaluation, the denoising step included; a solver that cannot meet K exactly uses the "
        "largest budget below it (shown in parentheses). Each cell of the first table is the "
        "solver's best grid (named) at that budget; **bold** is the best of all solvers and "
        "grids. Labels name the options that differ from the solver's defaults (`lof` = "
        "`lower_order_final`, `p` = `solver_order`, `taylor` = `second_difference=\"taylor\"`, "
        "a number after `deis`, `ipndm`, `dpm_solver_singlestep` = `solver_order`); "
        "`polyexp(2)` = `PolyExponentialGrid(rho=2)` (`rho=1` is `logsnr`). Two problems, not a "
        "general ranking.", ""]
    all_best: dict = {}
    for target in TARGETS:
        errs = measure(target, a.n, a.seed)
        summary, full, best = tables(target, errs)
        all_best.update({(lab, k, target): g for (lab, k), g in best.items()})
        desc = builtin_target(target).description.split(";")[0]
        parts += [f"#### `{target}` ({desc})", "", *summary, "",
                  f'??? note "All grids, `{target}`"', "",
                  *("    " + line for line in full), ""]
    lines = []
    for label, _, _ in CASES:
        count: dict[str, int] = {}
        for (lab, k, _t), g in all_best.items():
            if lab == label and 10 <= k <= 20:
                count[g] = count.get(g, 0) + 1
        top = sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append(f"- `{label}`: " + ", ".join(f"{g} ({c}/6)" for g, c in top))
    parts += ["**Best grid at 10–20 evaluations** (how often each grid was the solver's best, "
              "over NFE 10, 15, 20 on both targets):", "", *lines, "", provenance()]
    body = "\n".join(parts)
    write_section(SOLVERS_MD, "fewstep", body)
    print(body)


if __name__ == "__main__":
    main()
