r"""Compare samplers at equal NFE budgets: the main job of the toolkit.

For every (solver, budget) the same starting noise $x_T$ is pushed through the solver with
exactly that many network evaluations (denoising included); a budget a solver cannot meet
is recorded as such, not silently skipped. Each run is scored against a held-out set of
target samples by the registered distances ([`METRICS`][scoresde.evaluation.metrics.METRICS]:
sliced Wasserstein-2, MMD² (RBF, median heuristic, unbiased) and the energy distance, plus
any a user registers), each reported next to its **noise floor** (the same metric between
two independent target sets, mean ± std over repeats).
Where the target density is known exactly (a `GaussianMixture`), the average exact
log-density of the samples and the errors of their mean and covariance are reported too.

Rows are written to disk as they finish (``rows.jsonl``, ``results.csv``) in a temporary
folder that becomes the output folder when the run ends, so an interrupted comparison keeps
what it did (in ``<out>.interrupted-<time>``) and never mixes with an earlier run. At the
end: ``results.json`` (configuration, seed, versions, command, floors, rows), ``report.md``
(tables) and PNG plots, written by
[`scoresde.evaluation.report`][scoresde.evaluation.report]. Targets are in
[`targets`][scoresde.evaluation.targets], the solver-spec grammar in
[`specs`][scoresde.evaluation.specs].
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..analytic import GaussianMixture
from ..files import atomic_folder, check_output_folder
from ..samplers import BudgetError, SamplingError, sample
from ..validation import check_int
from .metrics import METRICS, mean_cov_errors, noise_floor
from .report import versions, write_csv, write_json, write_report
from .specs import SolverSpec, default_solvers
from .targets import BUILTIN_TARGETS, Target, builtin_target, checkpoint_target

Tensor = torch.Tensor

__all__ = ["Target", "SolverSpec", "Comparison", "compare", "builtin_target", "BUILTIN_TARGETS",
           "default_solvers", "DEFAULT_BUDGETS", "checkpoint_target"]

DEFAULT_BUDGETS = (10, 20, 50, 100, 250, 1000)


@dataclass
class Comparison:
    """Result of `compare`: configuration, noise floors and one dict per (solver, budget)."""

    config: dict[str, Any]
    floors: dict[str, dict[str, float]]
    rows: list[dict[str, Any]]
    out_dir: Path | None = None

    def headline(self, metric: str = "sw2") -> str:
        """Markdown table: metric / noise floor for each solver (rows) and budget (columns)."""
        budgets = self.config["budgets"]
        floor = self.floors[metric]["mean"]
        lines = ["| solver | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
                 "|---|" + "---|" * len(budgets)]
        labels = list(dict.fromkeys(r["solver"] for r in self.rows))
        for lab in labels:
            rs = [r for r in self.rows if r["solver"] == lab]
            if rs and rs[0]["adaptive"]:
                r = rs[0]
                cell = (f"{r[metric] / floor:.2f} (adaptive, NFE {r['nfe']})"
                        if r["status"] == "ok" else r["status"])
                lines.append(f"| {lab} | {cell} |" + " |" * (len(budgets) - 1))
                continue
            cells = []
            for b in budgets:
                r = next((x for x in rs if x["budget"] == b), None)
                if r is None or r["status"] == "unreachable":
                    cells.append("—")
                elif r["status"] != "ok":
                    cells.append(r["status"])
                else:
                    cells.append(f"{r[metric] / floor:.2f}")
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        fl = self.floors[metric]
        lines.append(f"\nNoise floor of {metric} at n = {self.config['n']}: {fl['mean']:.4g} ± "
                     f"{fl['std']:.2g}; ratios within 1 ± {fl['std'] / fl['mean']:.2f} cannot be "
                     "told apart from exact sampling at this sample size.")
        return "\n".join(lines)

    def winners(self, metric: str = "sw2") -> dict[int, str]:
        """The solver with the smallest metric at each budget."""
        out = {}
        for b in self.config["budgets"]:
            rs = [r for r in self.rows if r["budget"] == b and r["status"] == "ok"]
            if rs:
                out[b] = min(rs, key=lambda r: r[metric])["solver"]
        return out


def _score(x: Tensor, ref: Tensor, exact: GaussianMixture | None, seed: int) -> dict[str, float]:
    x64, ref64 = x.double().cpu(), ref.double().cpu()
    out = {name: m(x64, ref64, seed) for name, m in METRICS.items()}
    if exact is not None:
        errs = mean_cov_errors(x64, exact.mean, exact.covariance)
        out.update(mean_error=float(errs["mean_error"]), cov_error=float(errs["cov_error"]),
                   avg_logp=float(exact.log_prob(x64).mean()))
    return out


def compare(target: Target, solvers: Sequence[str | SolverSpec] | None = None,
            budgets: Sequence[int] = DEFAULT_BUDGETS, *, n: int = 4000, seed: int = 0,
            t_end: float | None = None, out_dir: str | os.PathLike | None = None,
            floor_repeats: int = 8, progress: bool = True,
            trajectories: bool | Sequence[str] = True, overwrite: bool = False,
            command: str | None = None) -> Comparison:
    """Run every solver at every budget from one shared $x_T$ and score the samples.

    **Arguments:**
    - ``target``: a `Target` (`builtin_target`, `checkpoint_target`).
    - ``solvers``: specs like ``"ddim:eta=0.5"``, ``"pf_ode:method=rk4"``,
      ``"pf_ode:adaptive=1,rtol=1e-5"``; default `default_solvers`.
    - ``budgets``: total NFE budgets (denoising step included).
    - ``n``: samples per run (and size of each target set); ``seed``: everything random.
    - ``out_dir``: where rows, tables and plots go (``None``: nothing written). The run
      writes into a fresh temporary folder beside it, renamed to ``out_dir`` when it ends
      (`scoresde.files.atomic_folder`): two runs never mix, and an interrupted run keeps its
      finished rows in ``<out_dir>.interrupted-<time>``.
    - ``overwrite``: replace a non-empty ``out_dir`` (only once the new run has finished);
      without it a non-empty ``out_dir`` is a `ValueError` before any work is done.
    - ``floor_repeats``: repeats of the noise-floor estimate.
    - ``trajectories``: plot sample paths (2-D targets): ``True`` for one solver of each
      kind among those compared (see `report.trajectory_specs`), a list of solver labels,
      or ``False``.

    **Returns:** a `Comparison`.
    """
    specs = [s if isinstance(s, SolverSpec) else SolverSpec.parse(s)
             for s in (solvers if solvers is not None else default_solvers())]
    if not specs:
        raise ValueError("no solvers to compare")
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 2:
        raise ValueError(f"budgets must be integers >= 2 (one step plus denoising), got {budgets}")
    check_int("n", n, 10)
    t_end = target.model.sde.sample_eps if t_end is None else float(t_end)
    if out_dir is None:
        return _run(target, specs, budgets, n, seed, t_end, None, floor_repeats, progress,
                    trajectories, command)
    dest = check_output_folder(out_dir, overwrite)   # before any work: refuse early
    with atomic_folder(dest, overwrite=overwrite) as work:
        comp = _run(target, specs, budgets, n, seed, t_end, work, floor_repeats, progress,
                    trajectories, command)
    comp.out_dir = dest
    return comp


def _run(target: Target, specs: list[SolverSpec], budgets: list[int], n: int, seed: int,
         t_end: float, out: Path | None, floor_repeats: int, progress: bool,
         trajectories: bool | Sequence[str], command: str | None) -> Comparison:
    model, sde = target.model, target.model.sde
    if out is not None:
        (out / "rows.jsonl").write_text("")
    ref = target.sample(n, torch.Generator().manual_seed(seed + 1)).double()
    event_shape = tuple(ref.shape[1:])
    x_T = sde.prior_sample((n, *event_shape), torch.Generator().manual_seed(seed),
                           dtype=torch.float32, device=model.device)

    def draw(m: int, g: torch.Generator) -> Tensor:
        return target.sample(m, g).double()

    g_floor = torch.Generator().manual_seed(seed + 2)
    metric_seed = seed + 4
    floors = {}
    for k, m in METRICS.items():
        nf = noise_floor(lambda a, b, m=m: m(a, b, metric_seed), draw, n, g_floor,
                         repeats=floor_repeats)
        floors[k] = {"mean": nf.mean, "std": nf.std}
    config = {
        "target": target.name, "target_description": target.description, "sde": sde.config(),
        "solvers": [s.label for s in specs], "budgets": budgets, "n": n, "seed": seed,
        "t_end": t_end, "command": command or " ".join(sys.argv),
        "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                    "device": str(model.device)},
    }
    if target.exact is not None:
        config["target_avg_logp"] = float(target.exact.log_prob(ref).mean())
    runs = [(s, None) for s in specs if s.adaptive] + \
           [(s, b) for s in specs if not s.adaptive for b in budgets]
    rows: list[dict[str, Any]] = []
    kept: dict[tuple[str, int], Tensor] = {}
    bar = tqdm(runs, disable=not progress, desc="compare", dynamic_ncols=True)
    try:
        for spec, budget in bar:
            bar.set_postfix_str(f"{spec.label} nfe={budget}")
            row: dict[str, Any] = {"solver": spec.label, "name": spec.name,
                                   "options": json.dumps(spec.options), "grid": spec.grid,
                                   "adaptive": spec.adaptive, "budget": budget}
            t0 = time.perf_counter()
            try:
                res = sample(model, solver=spec.make(), nfe=budget, x_T=x_T,
                             generator=torch.Generator().manual_seed(seed + 3), t_end=t_end,
                             grid=spec.grid)
            except BudgetError as e:
                row.update(status="unreachable", message=str(e))
            except SamplingError as e:
                row.update(status="failed", message=str(e))
            else:
                row.update(status="ok", nfe=res.nfe, wall_s=time.perf_counter() - t0)
                row.update(_score(res.x, ref, target.exact, metric_seed))
                for k in METRICS:
                    row[f"{k}_floor"] = floors[k]["mean"]
                    row[f"{k}_ratio"] = row[k] / floors[k]["mean"] if floors[k]["mean"] > 0 \
                        else math.nan
                kept[(spec.label, budget if budget is not None else -1)] = res.x[:1500].cpu()
            rows.append(row)
            if out is not None:
                with open(out / "rows.jsonl", "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
                write_csv(out / "results.csv", rows)
    finally:
        bar.close()
    comp = Comparison(config, floors, rows, out)
    if out is not None:
        write_json(out / "results.json", {"config": config, "floors": floors, "rows": rows})
        write_report(comp, model, ref, kept, specs, budgets, trajectories, x_T, t_end)
    return comp
