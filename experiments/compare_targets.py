"""Samplers at equal NFE on the built-in exact targets (the CLI's `compare`, documented).

For each target: every registered solver's comparison line-up (fixed-grid solvers and
adaptive pf_ode) at NFE 10 20 50 100 250 1000, "at most K" budgets (each solver at its largest
budget <= K, the NFE it used shown), R = 5 replicates of n = 2000 samples (each with its own
x_T, solver noise and reference set; all solvers of a replicate from the same x_T), every number
with its 95% t-interval, verdicts from paired differences (Holm-corrected), pathwise errors
against a tight PF-ODE solve, and the exact-density scores (log-density gap, variance ratio,
kernel Stein discrepancy). Then a solver x grid study on eight_gaussians (VP).
Writes docs/results/compare_<target>_<sde>/ and docs/results/grids_eight_gaussians_vp/ (report.md,
results.csv/json, replicates.csv, PNGs) and, in docs/results.md, the "compare" section (the
introduction) and one section per study ("compare_<target>_<sde>", "compare_grids"), so one
study can be rerun alone.

    nice python experiments/compare_targets.py                    # everything (~1 h on 2 busy cores)
    nice python experiments/compare_targets.py --only eight_gaussians_vp --n 1000   # one, quicker
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from _results import FIGURES, provenance, write_section  # noqa: I001

import scoresde as sd
from scoresde.evaluation.compare import DEFAULT_BUDGETS, Comparison, builtin_target, compare
from scoresde.evaluation.report import write_error_plots, write_markdown
from scoresde.evaluation.specs import SolverSpec

TARGETS = [("eight_gaussians", "vp"), ("mixture2d", "vp"), ("eight_gaussians", "ve")]
GRID_SOLVERS = ["ddim", "heun", "dpm_solver", "pf_ode:method=rk4"]
GRIDS = ["uniform", "quadratic", "logsnr", "karras"]
GRID_BUDGETS = [10, 20, 50]

INTRO = """## Samplers at equal NFE on exact targets

Every table below comes from R replicates of n samples (R and n are under each table): each
replicate has its own $x_T$, solver noise and held-out reference set, and within a replicate
every solver starts from the same $x_T$ and is scored against the same reference set, so
solvers are compared by *paired* differences. Cells are mean ± half-width of the 95%
t-interval over the replicates; the sliced W2 is divided by its noise floor (its value between
two independent exact sets of the same size; 1.00 = as close as exact sampling). Budgets are
"at most K": a solver that cannot meet K exactly runs at its largest budget below it, shown in
parentheses. The exact score means zero model error, so differences are solver error alone;
the verdict lines say only what the paired intervals support. How to read these tables:
[Reading a comparison](#reading-a-comparison)."""


def runtime(comp) -> str:
    """ " (N min on T threads)" from the run's recorded wall time, if recorded."""
    sec = comp.config.get("seconds")
    return "" if sec is None else (f" ({sec / 60:.0f} min on {comp.config['machine']['threads']} "
                                   "thread(s) of a shared 2-core machine)")


def section(comp, rel, title: str, cmd: str) -> list[str]:
    parts = [f"### {title}", "", comp.headline("sw2"), "", comp.verdict_line("sw2"), "",
             "Paired differences between the leading solvers (sliced W2, floor units):", "",
             comp.difference_table("sw2"), "",
             "Solver error alone, pathwise E‖x − x_ref‖ to a tight PF-ODE solve from the same "
             "$x_T$ (deterministic solvers):", "", comp.headline("pathwise"), "",
             comp.verdict_line("pathwise"), "",
             "Exact log-density gap E_q log p − E_p log p (nats; > 0 = over-concentrated; "
             "read like the tables above):", "", comp.headline("avg_logp", legend=False), "",
             f"![error vs NFE]({rel}/error_vs_nfe_sw2.png)", "",
             f"![pathwise error vs NFE]({rel}/error_vs_nfe_pathwise.png)", "",
             f"![samples]({rel}/samples_grid.png)", "",
             f"All scores (MMD², energy distance, kernel Stein discrepancy, variance ratio, "
             f"mean/covariance errors), floors, per-replicate values and trajectories: "
             f"[{rel}/report.md]({rel}/report.md). Command: `{cmd}`{runtime(comp)}.", ""]
    return parts


def reused(out, a) -> Comparison | None:
    """With --reuse, the comparison a previous run left in `out` if it had these settings,
    its error-vs-NFE plots and report.md redrawn by the current code (the sample grid and
    trajectories need the samples and stay as they were)."""
    if not a.reuse or not (out / "results.json").is_file():
        return None
    comp = Comparison.load(out)
    cfg = comp.config
    if (cfg.get("n"), cfg.get("replicates"), cfg.get("seed")) != (a.n, a.replicates, a.seed):
        return None
    specs = {r["solver"]: SolverSpec(r["name"], json.loads(r["options"]), r["grid"], r["adaptive"])
             for r in comp.rows}
    write_error_plots(comp)
    write_markdown(comp, list(specs.values()))
    return comp


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--replicates", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", help="targets as <target>_<sde>, or 'grids'")
    p.add_argument("--reuse", action="store_true", help="rewrite the sections from the result "
                   "folders a previous run with the same --n, --replicates and --seed left, "
                   "sampling only what is missing")
    a = p.parse_args()
    if "--reuse" in sys.argv:       # the provenance lines name the command that computes
        sys.argv.remove("--reuse")
    torch.set_num_threads(1)
    cmd_base = f"python experiments/compare_targets.py --n {a.n} --replicates {a.replicates}"
    if not a.only:
        write_section("compare", INTRO)
    for target, sde_name in TARGETS:
        key = f"{target}_{sde_name}"
        if a.only and key not in a.only:
            continue
        out = FIGURES / f"compare_{key}"
        comp = reused(out, a)
        if comp is None:
            comp = compare(builtin_target(target, sd.get_sde(sde_name)), None, DEFAULT_BUDGETS,
                           n=a.n, replicates=a.replicates, seed=a.seed, out_dir=out,
                           overwrite=True, progress=True, command=f"{cmd_base} --only {key}")
        parts = section(comp, out.relative_to(FIGURES.parent), f"{target}, {sde_name.upper()}-SDE",
                        f"{cmd_base} --only {key}")
        write_section(f"compare_{key}", "\n".join(parts + [provenance()]))
        print("\n".join(parts))
    if not a.only or "grids" in a.only:
        out = FIGURES / "grids_eight_gaussians_vp"
        comp = reused(out, a)
        if comp is None:
            comp = compare(builtin_target("eight_gaussians"), GRID_SOLVERS, GRID_BUDGETS,
                           grids=GRIDS, n=a.n, replicates=a.replicates, seed=a.seed, out_dir=out,
                           overwrite=True, progress=True, pathwise=False, trajectories=False,
                           command=f"{cmd_base} --only grids")
        rel = out.relative_to(FIGURES.parent)
        parts = ["### Time grids: every solver on every grid (eight_gaussians, VP-SDE)", "",
                 "The default line-up confounds grid and solver (dpm_solver runs on the log-SNR "
                 "grid, the others on the uniform one). Here each solver runs on each grid, "
                 f"from the same $x_T$ ({a.replicates} replicates of n = {a.n}); sliced W2 / "
                 "floor, mean ± 95% CI half-width, and per solver the paired verdict between "
                 "its grids (Holm-corrected).", "", comp.grid_tables("sw2"), "",
                 f"Full report: [{rel}/report.md]({rel}/report.md). Command: "
                 f"`{cmd_base} --only grids`{runtime(comp)}.", ""]
        write_section("compare_grids", "\n".join(parts + [provenance()]))
        print("\n".join(parts))


if __name__ == "__main__":
    main()
