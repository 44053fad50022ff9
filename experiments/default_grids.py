"""Default time grid per solver and per SDE, chosen by measurement.

Every deterministic solver of the registry (default options) on every grid rule (the registered
ones, plus `PolyExponentialGrid(rho=2)`; `rho=1` is `logsnr`), at at-most budgets of 10, 15 and
20 evaluations, on the VP, sub-VP and VE SDEs, each with the exact scores of two Gaussian
mixtures (8 Gaussians in 2-D, a random 5-D mixture): the pathwise error E||x - x_ref|| of the
denoised samples against a tight dopri5 solve of the PF-ODE (rtol = atol = 1e-10) from the same
x_T (`experiments/fewstep_table.py`'s `measure`), float64. A solver's default on an SDE is the
rule with the smallest geometric mean, over the 6 (target, budget) cells, of its error divided by
the solver's best error in that cell (the old default kept when within 1% of the best). Writes
the "default_grids" section of docs/results.md and prints the `default_grid` declarations;
`--check` exits 1 if a solver's declared default differs.

    python experiments/default_grids.py            # 1000 draws (about 10 min, 1 thread)
    python experiments/default_grids.py --n 200    # quicker
    python experiments/default_grids.py --save errs.json; ... --load errs.json --check
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
from _results import provenance, write_section  # noqa: I001
from fewstep_table import GRID_CASES as _CASES
from fewstep_table import measure

import scoresde as sd
from scoresde.samplers import FixedGridSolver, ProbabilityFlowODE, grid_label

#: (label, grid): fewstep_table's rules, labelled as the comparison labels them
GRID_CASES = [(g.label, g) for _, g in _CASES]

BUDGETS = (10, 15, 20)
TIE = 1.01
TARGETS = ("eight_gaussians", "mixture5d")
SDES = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}
#: each solver's default grid before this study (issue 12), on every SDE
OLD_DEFAULTS = {"dpm_solver": "logsnr", "dpm_solver_3m": "quadratic", "dpm_solver_singlestep": "quadratic",
                "deis": "quadratic", "ipndm": "quadratic", "unipc": "quadratic"}


def deterministic_solvers() -> list[tuple[str, str, dict]]:
    """(label, name, options): every registered solver whose default instance is deterministic
    and runs on a fixed grid."""
    out = []
    for name, cls in sd.SOLVERS.items():
        try:
            s = cls()
        except TypeError:
            continue
        if not s.stochastic and isinstance(s, FixedGridSolver | ProbabilityFlowODE):
            out.append((name, name, {}))
    return out


def choose(errs: dict, label: str, old: str) -> tuple[str, dict[str, float], dict[str, float]]:
    """The chosen grid, and per grid: the geometric mean of (error / best error) over the cells,
    and the largest such ratio. The old default stays unless another grid is more than
    ``TIE`` better (on VE, ``uniform`` and ``logsnr`` are the same grid: log-SNR is linear in t)."""
    grids = [g for g, _ in GRID_CASES]
    gmean, worst = {}, {}
    for g in grids:
        logs = []
        for (target, k), best in _bests(errs, label).items():
            logs.append(math.log(errs[target][(label, g)][k][0] / best))
        gmean[g], worst[g] = math.exp(sum(logs) / len(logs)), math.exp(max(logs))
    top = min(grids, key=lambda g: gmean[g])
    return (old if gmean[old] <= TIE * gmean[top] else top), gmean, worst


def _bests(errs: dict, label: str) -> dict[tuple[str, int], float]:
    return {(t, k): min(errs[t][(label, g)][k][0] for g, _ in GRID_CASES)
            for t in TARGETS for k in BUDGETS}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write the measured errors to this JSON file")
    p.add_argument("--load", help="use errors measured before (--save) instead of measuring")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if a solver's declared default_grid is not the chosen one")
    a = p.parse_args()
    torch.set_num_threads(1)
    cases = deterministic_solvers()
    chosen: dict[tuple[str, str], str] = {}
    rows, full = [], []
    if a.load:
        raw = json.loads(open(a.load).read())
        a.n = raw["n"]
        measured = {s: {t: {(lab, g): {int(k): tuple(v) for k, v in row.items()}
                            for lab, g, row in raw["errs"][s][t]} for t in TARGETS} for s in SDES}
    else:
        measured = {s: {t: measure(t, a.n, a.seed, sde=sde, cases=cases, budgets=BUDGETS,
                                   grids=GRID_CASES) for t in TARGETS} for s, sde in SDES.items()}
    if a.load:
        made = raw["provenance"]
    else:
        made = provenance()
    if a.save:
        with open(a.save, "w") as f:
            json.dump({"n": a.n, "provenance": made,
                       "errs": {s: {t: [[lab, g, row] for (lab, g), row in e.items()]
                                    for t, e in m.items()} for s, m in measured.items()}}, f)
    for sde_name, sde in SDES.items():
        errs = measured[sde_name]
        for label, name, _ in cases:
            old = OLD_DEFAULTS.get(name, "uniform")
            g, gmean, worst = choose(errs, label, old)
            chosen[(name, sde_name)] = g
            declared = grid_label(sd.SOLVERS[name]().default_grid, sde)
            at15 = " / ".join(f"{errs[t][(label, g)][15][0]:.1e}" for t in TARGETS)
            rows.append((name, sde_name, g, gmean[g], worst[g], old, gmean[old], worst[old],
                         declared, at15))
            full.append(f"| `{name}` | {sde_name} | " + " | ".join(
                (f"**{gmean[x]:.2f}**" if x == g else f"{gmean[x]:.2f}") for x, _ in GRID_CASES) + " |")
    head = ["| solver | SDE | chosen grid | error at NFE 15 (" + " / ".join(TARGETS) + ") "
            "| error / best: geo-mean, worst cell | old default | old: geo-mean, worst cell |",
            "| --- | --- | --- | ---: | ---: | --- | ---: |"]
    table = [f"| `{n}` | {s} | {g} | {e15} | {gm:.2f}, {w:.2f} | {o} | {ogm:.2f}, {ow:.2f} |"
             for n, s, g, gm, w, o, ogm, ow, _, e15 in rows]
    grid_head = ["| solver | SDE | " + " | ".join(g for g, _ in GRID_CASES) + " |",
                 "| --- | --- |" + " ---: |" * len(GRID_CASES)]
    changed = [r for r in rows if r[2] != r[5]]
    within = sum(r[4] <= 1.2 for r in rows)
    body = "\n".join([
        "## Default time grid per solver and SDE", "",
        f"Every deterministic solver (default options) on every grid rule, at at-most budgets "
        f"{', '.join(map(str, BUDGETS))} on the VP, sub-VP and VE SDEs with the exact scores of "
        f"{' and '.join(f'`{t}`' for t in TARGETS)} (float64, {a.n} draws of $x_T$ per target and "
        "SDE shared by all runs): the pathwise error $\\mathbb E\\|x - x_\\text{ref}\\|$ of the "
        "denoised samples against a dopri5 solve of the PF-ODE (rtol = atol = $10^{-10}$) from the "
        "same $x_T$. In each of the 6 (target, budget) cells a grid's error is divided by the "
        "solver's best error in that cell; a solver's default on an SDE is the grid with the "
        "smallest geometric mean of that ratio (1.00 = best in every cell), the old default "
        f"kept when within {100 * (TIE - 1):.0f}% of it (on VE `uniform` and `logsnr` are the "
        "same grid: log-SNR is linear in t). `polyexponential(rho=2)` is "
        "`PolyExponentialGrid(rho=2)` (`rho=1` is `logsnr`). The old defaults are those before "
        "this study (`uniform` for `ddim`, `heun`, `pf_ode`; `logsnr` for `dpm_solver`; "
        "`quadratic` for the others, on every SDE).", "",
        *head, *table, "",
        f"The default changed for {len(changed)} of the {len(rows)} (solver, SDE) pairs; the "
        f"old default's geometric-mean excess over the new one was up to "
        f"{max(r[6] / r[3] for r in rows):.1f}× (`{max(rows, key=lambda r: r[6] / r[3])[0]}` on "
        f"{max(rows, key=lambda r: r[6] / r[3])[1]}). No single rule is best at every budget "
        f"and target: the chosen default is within 1.2× of the solver's best rule in every cell "
        f"for {within} of the {len(rows)} pairs, and at worst {max(r[4] for r in rows):.1f}× "
        f"(`{max(rows, key=lambda r: r[4])[0]}` on {max(rows, key=lambda r: r[4])[1]}, in one "
        "cell). The solvers declare these defaults as `default_grid = PerSDEGrid({...}, "
        "fallback=...)` ([Time grids](solvers.md#default-grid-per-solver-and-sde)).", "",
        '??? note "Every grid: geometric mean of error / best, per solver and SDE"', "",
        *("    " + line for line in grid_head + full), "",
        made])
    write_section("default_grids", body)
    print(body)
    print("\ndeclarations (fallback = the VP choice):")
    mismatch = []
    for _, name, _ in cases:
        per = {s: chosen[(name, s)] for s in SDES}
        print(f"  {name}: {per}")
        mismatch += [(name, r[1], r[2], r[8]) for r in rows if r[0] == name and r[2] != r[8]]
    for name, s, want, have in mismatch:
        print(f"MISMATCH {name} on {s}: measured best {want}, declared {have}", file=sys.stderr)
    if a.check and mismatch:
        sys.exit(1)


if __name__ == "__main__":
    main()
