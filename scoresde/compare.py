r"""Compare samplers at equal NFE budgets: the main job of the toolkit.

For every (solver, budget) the same starting noise $x_T$ is pushed through the solver with
exactly that many network evaluations (denoising included); a budget a solver cannot meet
is recorded as such, not silently skipped. Each run is scored against a held-out set of
target samples by three distances (`scoresde.metrics`): sliced Wasserstein-2, MMD² (RBF,
median heuristic, unbiased) and the energy distance, each reported next to its **noise
floor** (the same metric between two independent target sets, mean ± std over repeats).
Where the target density is known exactly (a `GaussianMixture`), the average exact
log-density of the samples and the errors of their mean and covariance are reported too.

Rows are written to disk as they finish (``rows.jsonl``, ``results.csv``), so an
interrupted comparison keeps what it did. At the end: ``results.json`` (configuration,
seed, versions, command, floors, rows), ``report.md`` (tables) and PNG plots.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import __version__, metrics, plots
from .analytic import GaussianMixture
from .models import ScoreModel
from .samplers import SOLVERS, BudgetError, FixedGridSolver, SamplingError, sample
from .sdes import SDE, VPSDE

Tensor = torch.Tensor

__all__ = ["Target", "SolverSpec", "Comparison", "compare", "builtin_target", "BUILTIN_TARGETS",
           "default_solvers", "DEFAULT_BUDGETS", "checkpoint_target"]

DEFAULT_BUDGETS = (10, 20, 50, 100, 250, 1000)
METRIC_NAMES = ("sw2", "mmd", "energy")


# ----- targets -------------------------------------------------------------------------
@dataclass
class Target:
    """What the samplers are compared on: a model, a way to draw target samples, and the
    exact mixture when the density is known."""

    name: str
    model: ScoreModel
    sample: Callable[[int, torch.Generator], Tensor]
    exact: GaussianMixture | None = None
    description: str = ""


def _mixture(k: int, d: int, seed: int) -> GaussianMixture:
    return GaussianMixture.random(k, d, torch.Generator().manual_seed(seed), spread=1.5,
                                  min_std=0.15, max_std=0.6)


BUILTIN_TARGETS: dict[str, tuple[Callable[[], GaussianMixture], str]] = {
    "eight_gaussians": (GaussianMixture.eight_gaussians,
                        "8 Gaussians on a circle (scoresde.data.eight_gaussians), exact"),
    "mixture2d": (lambda: _mixture(4, 2, 0), "random 2-D mixture, 4 full-covariance components"),
    "mixture5d": (lambda: _mixture(3, 5, 1), "random 5-D mixture, 3 full-covariance components"),
}


def builtin_target(name: str = "eight_gaussians", sde: SDE | None = None) -> Target:
    """A built-in Gaussian-mixture target with its exact score (no training needed)."""
    if name not in BUILTIN_TARGETS:
        raise ValueError(f"unknown target {name!r}; built-in targets: {sorted(BUILTIN_TARGETS)}")
    make, desc = BUILTIN_TARGETS[name]
    gm = make()
    sde = sde or VPSDE()
    return Target(name=name, model=gm.as_model(sde),
                  sample=lambda n, g: gm.sample(n, g), exact=gm,
                  description=f"{desc}; exact score under {sde!r}")


def checkpoint_target(path: str | os.PathLike, data: str | None = None) -> Target:
    """A trained model from a checkpoint, compared with its toy data set (``data``, default:
    the one recorded in the checkpoint). For ``eight_gaussians`` the exact density is known."""
    from .checkpoint import load_checkpoint, load_model
    from .data import TOY_DATASETS, sample_toy

    model = load_model(path)
    meta = load_checkpoint(path).get("meta", {})
    data = data or meta.get("data")
    if data not in TOY_DATASETS:
        raise ValueError(f"checkpoint {str(path)!r} records no known toy data set (got {data!r}); "
                         f"pass one of {list(TOY_DATASETS)}")
    exact = GaussianMixture.eight_gaussians() if data == "eight_gaussians" else None
    return Target(name=f"{Path(path).name}:{data}", model=model,
                  sample=lambda n, g: sample_toy(data, n, generator=g), exact=exact,
                  description=f"trained model {str(path)!r} vs held-out {data} samples")


# ----- solver specs -----------------------------------------------------------------------
@dataclass
class SolverSpec:
    """A solver with options, parsed from ``"name"`` or ``"name:key=value,key=value"``.

    ``grid=...`` selects the time grid (default: the solver's own `default_grid`);
    ``adaptive=1`` asks for an adaptive
    solve (``pf_ode``, ``torchsde``), which ignores the budget list.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    grid: str | None = None
    adaptive: bool = False

    @classmethod
    def parse(cls, text: str) -> SolverSpec:
        name, _, rest = text.partition(":")
        if name not in SOLVERS:
            raise ValueError(f"unknown solver {name!r}; registered solvers: {sorted(SOLVERS)}")
        opts: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, eq, val = item.partition("=")
            if not eq:
                raise ValueError(f"solver option {item!r} in {text!r} is not key=value")
            try:
                opts[key.strip()] = ast.literal_eval(val.strip())
            except (ValueError, SyntaxError):
                opts[key.strip()] = val.strip()
        grid = opts.pop("grid", None)
        grid = None if grid is None else str(grid)
        adaptive = bool(opts.pop("adaptive", False))
        if adaptive and not SOLVERS[name].adaptive_capable:
            raise ValueError(f"solver {name!r} has no adaptive mode (only pf_ode and torchsde)")
        spec = cls(name, opts, grid, adaptive)
        spec.make()  # validate the options now, not in the middle of a run
        return spec

    def make(self):
        from .samplers import make_solver

        return make_solver(self.name, **self.options)

    @property
    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.options.items()]
        if self.grid is not None:
            parts.append(f"grid={self.grid}")
        if self.adaptive:
            parts.append("adaptive")
        return self.name + (f"[{','.join(parts)}]" if parts else "")


def default_solvers() -> list[SolverSpec]:
    """Every registered fixed-grid solver with default options, plus adaptive ``pf_ode``."""
    specs = [SolverSpec(n) for n, c in SOLVERS.items() if issubclass(c, FixedGridSolver)]
    specs.append(SolverSpec("pf_ode", {"method": "rk4"}))
    specs.append(SolverSpec("pf_ode", adaptive=True))
    return specs


# ----- the comparison ---------------------------------------------------------------------
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


def _versions() -> dict[str, str]:
    import numpy
    import torchdiffeq
    import torchsde

    return {"scoresde": __version__, "torch": str(torch.__version__), "numpy": numpy.__version__,
            "torchdiffeq": getattr(torchdiffeq, "__version__", "?"),
            "torchsde": getattr(torchsde, "__version__", "?"), "python": platform.python_version()}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _score(x: Tensor, ref: Tensor, exact: GaussianMixture | None, seed: int) -> dict[str, float]:
    x64, ref64 = x.double().cpu(), ref.double().cpu()
    out = {
        "sw2": float(metrics.sliced_wasserstein(x64, ref64,
                                                generator=torch.Generator().manual_seed(seed))),
        "mmd": float(metrics.mmd(x64, ref64)),
        "energy": float(metrics.energy_distance(x64, ref64)),
    }
    if exact is not None:
        errs = metrics.mean_cov_errors(x64, exact.mean, exact.covariance)
        out.update(mean_error=float(errs["mean_error"]), cov_error=float(errs["cov_error"]),
                   avg_logp=float(exact.log_prob(x64).mean()))
    return out


def compare(target: Target, solvers: Sequence[str | SolverSpec] | None = None,
            budgets: Sequence[int] = DEFAULT_BUDGETS, *, n: int = 4000, seed: int = 0,
            t_end: float | None = None, out_dir: str | os.PathLike | None = None,
            floor_repeats: int = 8, progress: bool = True, trajectories: bool = True,
            command: str | None = None) -> Comparison:
    """Run every solver at every budget from one shared $x_T$ and score the samples.

    **Arguments:**
    - ``target``: a `Target` (`builtin_target`, `checkpoint_target`).
    - ``solvers``: specs like ``"ddim:eta=0.5"``, ``"pf_ode:method=rk4"``,
      ``"pf_ode:adaptive=1,rtol=1e-5"``; default `default_solvers`.
    - ``budgets``: total NFE budgets (denoising step included).
    - ``n``: samples per run (and size of each target set); ``seed``: everything random.
    - ``out_dir``: where rows, tables and plots go (``None``: nothing written).
    - ``floor_repeats``: repeats of the noise-floor estimate.

    **Returns:** a `Comparison`.
    """
    specs = [s if isinstance(s, SolverSpec) else SolverSpec.parse(s)
             for s in (solvers if solvers is not None else default_solvers())]
    if not specs:
        raise ValueError("no solvers to compare")
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 2:
        raise ValueError(f"budgets must be integers >= 2 (one step plus denoising), got {budgets}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise ValueError(f"n must be an integer >= 10, got {n!r}")
    model, sde = target.model, target.model.sde
    t_end = sde.sample_eps if t_end is None else float(t_end)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ValueError(f"output folder {str(out)!r} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        (out / "rows.jsonl").write_text("")
    ref = target.sample(n, torch.Generator().manual_seed(seed + 1)).double()
    event_shape = tuple(ref.shape[1:])
    x_T = sde.prior_sample((n, *event_shape), torch.Generator().manual_seed(seed),
                           dtype=torch.float32, device=model.device)

    def draw(m: int, g: torch.Generator) -> Tensor:
        return target.sample(m, g).double()

    g_floor = torch.Generator().manual_seed(seed + 2)
    sw_seed = seed + 4
    floor_fns = {
        "sw2": lambda a, b: metrics.sliced_wasserstein(
            a, b, generator=torch.Generator().manual_seed(sw_seed)),
        "mmd": metrics.mmd, "energy": metrics.energy_distance}
    floors = {}
    for k, fn in floor_fns.items():
        nf = metrics.noise_floor(fn, draw, n, g_floor, repeats=floor_repeats)
        floors[k] = {"mean": nf.mean, "std": nf.std}
    config = {
        "target": target.name, "target_description": target.description, "sde": sde.config(),
        "solvers": [s.label for s in specs], "budgets": budgets, "n": n, "seed": seed,
        "t_end": t_end, "command": command or " ".join(sys.argv),
        "versions": _versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
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
                row.update(_score(res.x, ref, target.exact, sw_seed))
                for k in METRIC_NAMES:
                    row[f"{k}_floor"] = floors[k]["mean"]
                    row[f"{k}_ratio"] = row[k] / floors[k]["mean"] if floors[k]["mean"] > 0 \
                        else math.nan
                kept[(spec.label, budget if budget is not None else -1)] = res.x[:1500].cpu()
            rows.append(row)
            if out is not None:
                with open(out / "rows.jsonl", "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
                _write_csv(out / "results.csv", rows)
    finally:
        bar.close()
    comp = Comparison(config, floors, rows, out)
    if out is not None:
        _write_json(out / "results.json", {"config": config, "floors": floors, "rows": rows})
        _write_report(comp, model, ref, kept, specs, budgets, trajectories, x_T, t_end)
    return comp


def _write_report(comp: Comparison, model: ScoreModel, ref: Tensor,
                  kept: dict[tuple[str, int], Tensor],
                  specs: list[SolverSpec], budgets: list[int], trajectories: bool, x_T: Tensor,
                  t_end: float) -> None:
    out = comp.out_dir
    if out is None:
        return
    cfg, floors, rows = comp.config, comp.floors, comp.rows
    fixed = [s for s in specs if not s.adaptive]
    for k, title in (("sw2", "sliced Wasserstein-2"), ("mmd", "MMD² (RBF, unbiased)"),
                     ("energy", "energy distance")):
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
            for name in ("euler_maruyama", "ddim", "heun", "pf_ode"):
                if name not in SOLVERS:
                    continue
                spec = next((s for s in fixed if s.name == name), SolverSpec(name))
                slv = spec.make()
                b = next((b for b in (20, 21, 25, 30, 40, 41) if _meets(slv, b)), None)
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
             f"names one (dpm_solver: logsnr, others: uniform)",
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
    keys = ["solver", "budget", "nfe", "status", "sw2", "mmd", "energy", "mean_error",
            "cov_error", "avg_logp", "wall_s"]
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


def _meets(solver, budget: int) -> bool:
    try:
        solver.steps_for_nfe(budget, extra=1)
        return True
    except (BudgetError, ValueError):
        return False

