"""Persistence and reports of a comparison: atomic JSON/CSV writers, the versions record,
and the report writer (tables in ``report.md`` and PNG plots; matplotlib is imported only
here, when a report is written)."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..models import ScoreModel
from ..samplers import get_grid, grid_label, sample
from ..sdes import sde_from_config
from ..version import __version__
from .specs import SolverSpec

Tensor = torch.Tensor

__all__ = ["versions", "write_json", "write_csv", "write_report", "write_error_plots",
           "write_markdown", "trajectory_specs"]


def versions() -> dict[str, str]:
    """Versions of scoresde, torch, numpy, torchdiffeq, torchsde and Python."""
    import numpy
    import torchdiffeq
    import torchsde

    return {"scoresde": __version__, "torch": str(torch.__version__), "numpy": numpy.__version__,
            "torchdiffeq": getattr(torchdiffeq, "__version__", "?"),
            "torchsde": getattr(torchsde, "__version__", "?"), "python": platform.python_version()}


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON atomically (temporary file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write `rows` (dicts, the union of their keys as columns) as CSV atomically."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def trajectory_specs(specs: Sequence[SolverSpec], which: bool | Sequence[str] = True
                     ) -> list[SolverSpec]:
    """The fixed-grid specs whose sample paths the report draws: the given labels (or names),
    or with ``True`` the first of each kind (stochastic or not, and order) among `specs`,
    at most four."""
    if which is False:
        return []
    if which is not True:
        wanted = list(which)
        return [s for w in wanted for s in specs if w in (s.label, s.name)][:len(wanted)]
    seen, out = set(), []
    for s in specs:
        slv = s.make()
        key = (bool(slv.stochastic), float(slv.order))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out[:4]


def _default_grids(specs: Sequence[SolverSpec], sde_cfg: dict[str, Any]) -> str:
    """The default grid of each solver without a ``grid=``, on the comparison's SDE (a
    per-SDE default named by its full rule when the SDE cannot be rebuilt)."""
    try:
        sde = sde_from_config(sde_cfg)
    except (ValueError, TypeError):
        sde = None
    grids: dict[str, list[str]] = {}
    for s in specs:
        if s.grid is None:
            dg = s.make().default_grid
            grids.setdefault(get_grid(dg).label if sde is None else grid_label(dg, sde),
                             []).append(s.name)
    return "; ".join(f"{g}: {', '.join(dict.fromkeys(names))}" for g, names in grids.items())


def _curves(comp: Any, metric: str, labels: Sequence[str]) -> dict[str, tuple[list[float], ...]]:
    """Per label: NFE used, mean, interval low and high of ``metric`` (one point per NFE)."""
    curves = {}
    for lab in labels:
        pts: dict[int, tuple[float, float, float]] = {}
        for r in comp.rows:
            if r["solver"] == lab and r["status"] == "ok" and r.get(metric) is not None:
                pts[r["nfe"]] = (r[metric], r.get(f"{metric}_lo", math.nan),
                                 r.get(f"{metric}_hi", math.nan))
        if pts:
            nfe = sorted(pts)
            curves[lab] = (nfe, *([pts[k][i] for k in nfe] for i in range(3)))
    return curves


def _design(cfg: dict[str, Any], specs: Sequence[SolverSpec]) -> list[str]:
    ref = cfg.get("reference")
    mode = ("at most K (each solver at its largest budget ≤ K; the NFE it used is shown when "
            "it differs)" if cfg.get("budget_mode") == "at_most" else "exactly K (— where a "
            "solver cannot meet K)")
    lines = [f"- command: `{cfg['command']}`",
             f"- design: seed {cfg['seed']}; {cfg.get('replicates', 1)} replicates of "
             f"n = {cfg['n']} samples, each with its own x_T, solver noise and held-out "
             "reference set; within a replicate every solver starts from the same x_T and is "
             "scored against the same reference set (paired); t_end = "
             f"{cfg['t_end']}; {cfg.get('dtype', 'float32')}",
             f"- budgets: {mode}",
             "- time grids: " + (f"each solver on each of {', '.join(cfg['grids'])}"
                                 if cfg.get("grids") else "each solver on its own default "
                                 "grid unless its label names one "
                                 f"({_default_grids(specs, cfg['sde'])})"),
             f"- noise floors: {cfg.get('floor_repeats', '?')} pairs of "
             f"{cfg.get('floor_sets', 'independent exact sets')} of size n"]
    if ref and "failed" in ref:
        lines.append(f"- pathwise reference: the tight PF-ODE solve failed ({ref['failed']}); no "
                     "pathwise errors")
    elif ref:
        lines.append(f"- pathwise reference: {ref['solver']} with rtol = atol = {ref['rtol']:g} "
                     f"from the same x_T ({ref['nfe']} NFE for the whole batch), denoised like "
                     "every run")
    lines += [f"- versions: {', '.join(f'{k} {v}' for k, v in cfg['versions'].items())}",
              f"- {cfg['date']}, {cfg['machine']['platform']}, {cfg['machine']['threads']} threads"]
    return lines


def write_error_plots(comp: Any) -> list[Path]:
    """The error-vs-NFE plots of a comparison into ``comp.out_dir``: one per registered
    metric, plus the pathwise error and the Stein discrepancy when computed; means with their
    95% bands and the floor. Needs only the `Comparison` (also one from
    `Comparison.load`). **Returns:** the paths written."""
    from . import plots  # matplotlib is imported only when a report is written

    cfg, rows = comp.config, comp.rows
    floors = {**comp.floors, **comp.score_floors}
    labels = list(dict.fromkeys(r["solver"] for r in rows if r["budget"] is not None))
    has = {k for r in rows for k in r}
    plotted = list(comp.metrics.items())
    if "pathwise" in has:
        plotted.append(("pathwise", "pathwise error E|x - x_ref| (deterministic solvers)"))
    if "ksd" in has:
        plotted.append(("ksd", "kernel Stein discrepancy² (IMQ, exact score)"))
    out = []
    for k, title in plotted:
        fl = floors.get(k)
        out.append(plots.plot_error_vs_nfe(
            _curves(comp, k, labels), comp.out_dir / f"error_vs_nfe_{k}.png",
            floor=(fl["mean"], fl["low"], fl["high"]) if fl else None, ylabel=title,
            floor_label="reference accuracy" if k == "pathwise" else "noise floor (95% CI)",
            title=f"{cfg['target']}: {title}\nmean and 95% CI over {cfg.get('replicates', 1)} "
                  "replicates"))
    return out


def write_report(comp: Any, model: ScoreModel, ref: Tensor,
                 kept: dict[tuple[str, int], Tensor], specs: list[SolverSpec],
                 budgets: list[int], trajectories: bool | Sequence[str], x_T: Tensor,
                 t_end: float) -> None:
    """Write the error-vs-NFE plots (one per metric of the comparison, plus the pathwise
    error and the Stein discrepancy when computed; means with their confidence bands and the
    noise floor), the sample grid and sample paths (2-D targets, replicate 0: ``ref`` its
    reference set, ``x_T`` its starting noise; for images ``(C, H, W)`` with C = 1 or 3, a
    grid of images per solver and budget next to reference images) and ``report.md`` into
    ``comp.out_dir``."""
    from . import plots  # matplotlib is imported only when a report is written

    out = comp.out_dir
    if out is None:
        return
    cfg = comp.config
    fixed = [s for s in specs if not s.adaptive]
    labels = [s.label for s in fixed]
    write_error_plots(comp)
    if ref.shape[1:] == (2,):
        plots.plot_sample_grid(kept, labels, budgets, out / "samples_grid.png", ref=ref[:3000],
                               lim=float(ref.abs().max()) * 1.1)
        if trajectories:
            paths = {}
            for spec in trajectory_specs(fixed, trajectories):
                slv = spec.make()
                b = next((b for b in slv.reachable(45, extra=1) if b >= 20), None)
                if b is None:
                    continue
                res = sample(model, solver=slv, nfe=b, x_T=x_T[:60],
                             generator=torch.Generator().manual_seed(cfg["seed"] + 3),
                             t_end=t_end, grid=spec.grid, trajectory=True)
                paths[f"{spec.label}, NFE {b}"] = (res.times, res.trajectory)
            if paths:
                plots.plot_trajectories(paths, out / "trajectories.png")
    elif ref.ndim == 4 and ref.shape[1] in (1, 3):
        plots.plot_image_sample_grid(kept, labels, budgets, out / "samples_grid.png",
                                     ref=ref[:16])
    write_markdown(comp, specs)


def write_markdown(comp: Any, specs: Sequence[SolverSpec]) -> Path:
    """``report.md`` of a comparison (its tables, verdicts and the plots present in
    ``comp.out_dir``), from the `Comparison` alone (also one from `Comparison.load`).
    **Returns:** its path."""
    out = comp.out_dir
    cfg, rows = comp.config, comp.rows
    floors = {**comp.floors, **comp.score_floors}
    has = {k for r in rows for k in r}
    main = comp.primary
    title = "sliced W2" if main == "sw2" else comp.metrics[main]
    lines = [f"# Sampler comparison: {cfg['target']}", "", f"{cfg['target_description']}.", "",
             *_design(cfg, specs), "",
             f"## Headline: {title} / noise floor (1.00 = as close as exact samples)", "",
             comp.headline(main), "", "The other tables below read the same way (mean ± "
             "95% half-width over the replicates; marks as above; raw values where the metric "
             "has no positive floor).", "", comp.verdict_line(main), "",
             "### Paired differences between the leading solvers", "",
             f"Differences of {title} per replicate (same x_T, same reference set), mean and "
             "95% t-interval; Holm-adjusted p-values over the comparisons with the leader at "
             "each budget. 'Leader better' needs Holm p ≤ 0.05.", "",
             comp.difference_table(main), ""]
    grid_txt = comp.grid_tables(main)
    if grid_txt:
        lines += [f"## Time grids: solver × grid ({title} / floor)", "",
                  "Each solver on each grid at the same budget, from the same x_T; the last "
                  "column is the paired verdict between that solver's grids.", "", grid_txt, ""]
    if "pathwise" in has:
        lines += ["## Solver error alone: pathwise distance to a tight PF-ODE solve", "",
                  "E‖x − x_ref‖ between each deterministic solver's sample and the reference "
                  "solve of the same model from the same x_T (stochastic solvers follow other "
                  "paths and have none). It measures the solver, not the model: on a trained "
                  "network it is zero for a perfect solver however wrong the network is.", "",
                  comp.headline("pathwise", legend=False), "", comp.verdict_line("pathwise"), ""]
    if "avg_logp" in has:
        lines += ["## Exact target: concentration, dispersion and Stein discrepancy", "",
                  f"Exact log-density gap E_q log p − E_p log p (nats; E_p log p = "
                  f"{cfg.get('target_avg_logp', math.nan):.4f} from the floor's exact sets). "
                  "Positive means the samples sit in higher-density regions than exact samples: "
                  "over-concentration, which implies a lower entropy than the target's.", "",
                  comp.headline("avg_logp", legend=False), "",
                  "Variance ratio tr Cov(samples) / tr Cov(target) (1 = right overall spread):",
                  "", comp.headline("var_ratio", legend=False), "",
                  "Kernel Stein discrepancy² (U-statistic, IMQ kernel, exact data score; 0 in "
                  "expectation for exact samples, no reference set). Score-based discrepancies "
                  "are nearly blind to the weights of well-separated modes: read it with the "
                  "distances.", "", comp.headline("ksd", legend=False), "", comp.verdict_line("ksd"), ""]
    others = [k for k in comp.metrics if k != main]
    if others:
        lines += ["## Other distances to the reference sets", ""]
        for k in others:
            lines += [f"### {comp.metrics[k]}", "", comp.headline(k, legend=False), ""]
    sets = cfg.get("floor_sets", "independent exact sets")
    lines += ["## Noise floors", "", f"Each score between {sets} of size n "
              "(pathwise: the reference solve against one 10 times tighter, per replicate).", "",
              "| score | mean | 95% CI | std of one pair | pairs |",
              "|---|---|---|---|---|"]
    for k, v in floors.items():
        lines.append(f"| {k} | {v['mean']:.4g} | [{v['low']:.4g}, {v['high']:.4g}] | "
                     f"{v['std']:.2g} | {len(v['values'])} |")
    lines += ["", "## Runs", "", "| solver | budget | NFE | status | wall s (all replicates) | "
              "flags |", "|---|---|---|---|---|---|"]
    for r in rows:
        wall = f"{r['wall_s']:.2f}" if isinstance(r.get("wall_s"), float) else ""
        b = "adaptive" if r["budget"] is None else r["budget"]
        lines.append(f"| {r['solver']} | {b} | {r.get('nfe') or ''} | {r['status']} | {wall} | "
                     f"{', '.join(r.get('flags') or [])} |")
    not_run = [r for r in rows if r["status"] != "ok"]
    if not_run:
        lines += ["", "Not run or failed:", ""]
        lines += [f"- {r['solver']} at NFE {r['budget']}: {r.get('message', r['status'])}"
                  for r in not_run]
    lines += ["", "Per-replicate values: `replicates.csv`; cell summaries: `results.csv`; "
              "everything: `results.json`."]
    pngs = sorted(p.name for p in out.glob("*.png"))
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in pngs]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
