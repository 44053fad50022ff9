"""Samplers at equal NFE on the built-in exact targets (the CLI's `compare`, documented).

For each target: every fixed-grid solver plus adaptive pf_ode at the CLI's default budgets
NFE 10 20 50 100 250 1000 and also at 21 101 1001 (odd totals, which `pc` (2n + 1) and
`pf_ode` rk4 (4n + 1) can meet and `heun` (2n) cannot),
n = 4000 samples from one shared x_T, distances to held-out target samples next to their
noise floors. Writes docs/results/compare_<target>/ (report.md, results.csv/json, PNGs) and
the "compare" section of docs/results.md.

    python experiments/compare_targets.py            # all targets
    python experiments/compare_targets.py --n 1000   # quicker
"""

from __future__ import annotations

import argparse

import torch
from _results import FIGURES, provenance, write_section  # noqa: I001

import scoresde as sd
from scoresde.evaluation.compare import DEFAULT_BUDGETS, builtin_target, compare

TARGETS = [("eight_gaussians", "vp"), ("mixture2d", "vp"), ("eight_gaussians", "ve")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    parts = ["## Samplers at equal NFE on exact targets", "",
             "Sliced W2 to held-out target samples divided by its noise floor (two independent "
             "exact sets of the same size); 1.0 means indistinguishable from exact samples at this "
             "sample size, — marks a budget the solver cannot meet exactly. Every run starts from "
             "the same $x_T$; the exact score means zero model error, so differences are solver "
             "error alone. Each solver runs on its default time grid (dpm_solver: log-SNR, others: "
             "uniform); the budgets 21, 101 and 1001 are there so that `pc` "
             "(2n + 1 evaluations) and `pf_ode` with rk4 (4n + 1) appear.", ""]
    for target, sde_name in TARGETS:
        out = FIGURES / f"compare_{target}_{sde_name}"
        budgets = sorted(set(DEFAULT_BUDGETS) | {21, 101, 1001})
        comp = compare(builtin_target(target, sd.get_sde(sde_name)), None, budgets, n=a.n, seed=a.seed,
                       out_dir=out, progress=True,
                       command=f"python experiments/compare_targets.py --n {a.n}")
        rel = out.relative_to(FIGURES.parent)
        win = comp.winners("sw2")
        parts += [f"### {target}, {sde_name.upper()}-SDE", "", comp.headline("sw2"), "",
                  "Best at each budget (SW2): " + ", ".join(f"{b}: {s}" for b, s in win.items()),
                  "", f"![error vs NFE]({rel}/error_vs_nfe_sw2.png)", "",
                  f"![samples]({rel}/samples_grid.png)", "",
                  f"Full tables (MMD, energy distance, mean/covariance errors, exact log-density, "
                  f"wall time) and trajectories: [{rel}/report.md]({rel}/report.md).", ""]
    parts.append(provenance())
    write_section("compare", "\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
