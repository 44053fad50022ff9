"""Persistence and reports of a comparison: atomic JSON/CSV writers, the versions record,
and the report writer (tables in ``report.md`` and PNG plots; matplotlib is imported only
here, when a report is written)."""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..models import ScoreModel
from ..samplers import sample
from ..version import __version__
from .metrics import METRICS
from .specs import SolverSpec

Tensor = torch.Tensor

__all__ = ["versions", "write_json", "write_csv", "write_report", "trajectory_specs"]


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


def _default_grids(specs: Sequence[SolverSpec]) -> str:
    grids: dict[str, list[str]] = {}
    for s in specs:
        if s.grid is None:
            grids.setdefault(s.make().default_grid, []).append(s.name)
    return "; ".join(f"{g}: {', '.join(dict.fromkeys(names))}" for g, names in grids.items())


def write_report(comp: Any, model: ScoreModel, ref: Tensor,
                 kept: dict[tuple[str, int], Tensor], specs: list[SolverSpec],
                 budgets: list[int], trajectories: bool | Sequence[str], x_T: Tensor,
                 t_end: float) -> None:
    """Write the error-vs-NFE plots (one per registered metric), the sample grid and sample
    paths (2-D targets) and ``report.md`` into ``comp.out_dir``."""
    from . import plots  # matplotlib is imported only when a report is written

    out = comp.out_dir
    if out is None:
        return
    cfg, floors, rows = comp.config, comp.floors, comp.rows
    fixed = [s for s in specs if not s.adaptive]
    for k, title in ((k, m.title) for k, m in METRICS.items()):
        curves = {}
        for s in fixed:
            pts = [(r["nfe"], r[k]) for r in rows if r["solver"] == s.label and r["status"] == "ok"]
            if pts:
                curves[s.label] = tuple(zip(*pts, strict=True))
        plots.plot_error_vs_nfe(curves, out / f"error_vs_nfe_{k}.png",
                                floor=(floors[k]["mean"], floors[k]["std"]), ylabel=title,
                                title=f"{cfg['target']}: {title} to held-out target samples")
    if ref.shape[1:] == (2,):
        labels = [s.label for s in fixed]
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
    lines = [f"# Sampler comparison: {cfg['target']}", "",
             f"{cfg['target_description']}.", "",
             f"- command: `{cfg['command']}`",
             f"- seed {cfg['seed']}, n = {cfg['n']} samples per run, t_end = {cfg['t_end']}, "
             f"same x_T for every run; each solver on its default time grid unless its label "
             f"names one ({_default_grids(fixed)})",
             f"- versions: {', '.join(f'{k} {v}' for k, v in cfg['versions'].items())}",
             f"- {cfg['date']}, {cfg['machine']['platform']}, {cfg['machine']['threads']} threads",
             "", "## Headline: sliced W2 / noise floor (1.0 = as close as two exact sample sets)",
             "", comp.headline("sw2"), "",
             "Noise floors (mean ± std over repeats, two independent target sets of size n): " +
             ", ".join(f"{k} {v['mean']:.4g} ± {v['std']:.2g}" for k, v in floors.items()), ""]
    win = comp.winners("sw2")
    if win:
        lines += ["Best solver by SW2 at each budget: " +
                  ", ".join(f"NFE {b}: {s}" for b, s in win.items()), ""]
    if "target_avg_logp" in cfg:
        lines += [f"Exact average log-density of held-out target samples: "
                  f"{cfg['target_avg_logp']:.4f} nats.", ""]
    keys = ["solver", "budget", "nfe", "status", *METRICS, "mean_error", "cov_error",
            "avg_logp", "wall_s"]
    lines += ["## All runs", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "adaptive"))
        lines.append("| " + " | ".join(cells) + " |")
    unreachable = [r for r in rows if r["status"] == "unreachable"]
    if unreachable:
        lines += ["", "Budgets a solver cannot meet exactly (not run):", ""]
        lines += [f"- {r['solver']} at NFE {r['budget']}: {r['message']}" for r in unreachable]
    pngs = sorted(p.name for p in out.glob("*.png"))
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in pngs]
    (out / "report.md").write_text("\n".join(lines) + "\n")
