r"""Compare samplers at equal NFE budgets: the main job of the toolkit.

**Design.** A comparison runs $R$ **replicates** (``replicates``, default 5). Replicate $r$
has its own starting noise $x_T^{(r)}$ and its own held-out reference set of target samples,
both drawn from generators seeded by ``(seed, r)`` alone; within a replicate **every solver
starts from the same** $x_T^{(r)}$ and is scored against the same reference set, so two
solvers' values are *paired* by replicate. The replicates of one (solver, budget) are solved
at once, as one batch of $R n$ samples (the engine stays vectorised); the solver noise is one
stream over the batch, the same for every solver (common random numbers), so replicate $r$
gets fresh noise in rows $rn, \dots, (r+1)n - 1$.

**Budgets.** ``budget_mode="at_most"`` (default) runs each solver at the largest budget
$\le K$ it can meet (`Solver.steps_within`) and records the NFE it used, so every solver has a
value in every column; ``"exact"`` runs exactly $K$ and records a budget a solver cannot meet
as ``unreachable``. ``grids`` crosses every solver spec without its own ``grid=`` with each
listed time grid (a solver × grid table).

**Scores.** Each replicate is scored by

- the registered sample-set distances ([`METRICS`][scoresde.evaluation.metrics.METRICS]: sliced
  Wasserstein-2, MMD², energy distance), or the ones given as ``metrics`` (e.g. the
  Fréchet distance and KID in a classifier's features for images), to the replicate's
  reference set, each next to its **noise floor**, its value between two independent exact
  sets of the same size (``floor_repeats`` pairs; for a fixed data set, training vs
  held-out images: `Target.floor_sample`);
- for deterministic solvers, the **pathwise error** $\mathbb E\|x - x_\text{ref}\|$ against a
  tight adaptive PF-ODE solve of *the same model* from the same $x_T$ (``reference_tol``,
  both denoised by the same Tweedie step): solver error alone, also for a trained model whose
  distribution error mixes solver and model error;
- where the target density is exact (a `GaussianMixture`): the average exact log-density
  ``avg_logp`` and its gap to exact samples ``logp_gap`` $= \mathbb E_q\log p -
  \mathbb E_p\log p$ (positive = more concentrated than the target: then
  $H(q) < H(p)$), the mean and covariance errors, the variance ratio
  ``var_ratio`` $= \operatorname{tr}\mathrm{Cov}_q / \operatorname{tr}\mathrm{Cov}_p$, and
  the kernel Stein discrepancy ``ksd`` with the exact data score (no reference set).

**Statistics** ([`stats`][scoresde.evaluation.stats]). Every cell reports the mean over the
replicates and its 95% Student-$t$ interval; ratios to the floor carry Fieller's interval.
Solvers are ranked at each budget by paired differences (Holm-corrected): a solver is called
best only if it is significantly better than every other, otherwise the leading solvers are
reported as indistinguishable. A cell is **flagged** as a sign of under-dispersion when a
distance is significantly *below* its noise floor (closer to the reference set than exact
samples are: ``"<metric> below floor"``), when its samples are significantly more
concentrated than the target (``logp_gap`` > 0: ``"concentrated"``) or narrower
(``var_ratio`` below the floor's: ``"narrow"``).

**Files.** Rows are written as they finish (``rows.jsonl`` one line per (solver, budget)
cell, ``results.csv``, ``replicates.csv`` one line per replicate) in a temporary folder that
becomes the output folder when the run ends, so an interrupted comparison keeps what it did (in
``<out>.interrupted-<time>``) and never mixes with an earlier run. At the end:
``results.json`` (configuration, seeds, versions, command, floors, cells, replicates),
``report.md`` and PNG plots ([`report`][scoresde.evaluation.report]).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..analytic import GaussianMixture
from ..files import atomic_folder, check_output_folder
from ..samplers import GRIDS, BudgetError, SamplingError, grid_label, sample
from ..training.distributed import all_gather_object, rank_and_world, run_on_every_rank
from ..validation import check_int, check_real
from .metrics import METRICS, Metric, kernel_stein_discrepancy, mean_cov_errors, noise_floor
from .report import versions, write_csv, write_json, write_report
from .specs import SolverSpec, default_solvers
from .stats import Verdict, compare_to_leader, ratio_interval, t_interval, welch_difference
from .targets import BUILTIN_TARGETS, Target, builtin_target, checkpoint_target

Tensor = torch.Tensor

__all__ = ["Target", "SolverSpec", "Comparison", "compare", "builtin_target", "BUILTIN_TARGETS",
           "default_solvers", "DEFAULT_BUDGETS", "BUDGET_MODES", "EXACT_METRICS",
           "checkpoint_target", "replicate_generator"]

DEFAULT_BUDGETS = (10, 20, 50, 100, 250, 1000)
BUDGET_MODES = ("at_most", "exact")

#: scores computed when the target density is exact, with the direction a suspicious
#: (under-dispersion) difference from exact samples takes: +1 higher, -1 lower, 0 none
EXACT_METRICS: dict[str, tuple[str, int]] = {
    "avg_logp": ("mean exact log-density of the samples (nats)", +1),
    "ksd": ("kernel Stein discrepancy² (IMQ, exact data score)", 0),
    "mean_error": ("‖sample mean − exact mean‖", 0),
    "cov_error": ("‖sample covariance − exact covariance‖_F", 0),
    "var_ratio": ("tr Cov(samples) / tr Cov(target)", -1),
}
FLAG_NAMES = {"avg_logp": "concentrated", "var_ratio": "narrow"}

# streams of the seed derivation (replicate_generator)
_X_T, _REFERENCE, _SOLVER, _FLOOR = 0, 1, 2, 3


def replicate_generator(seed: int, replicate: int, stream: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, stream, replicate)`` alone by NumPy's
    `SeedSequence` (well-mixed, independent streams): stream 0 draws replicate's $x_T$, 1 its
    reference set, 2 the solver noise (``replicate = 0``: one stream for the batch), 3 the
    noise-floor pairs (``replicate`` = the repeat)."""
    state = np.random.SeedSequence([int(seed), int(stream), int(replicate)]).generate_state(
        2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


@dataclass
class Comparison:
    """Result of `compare`.

    - `config`: the run's configuration (seed, replicates, budgets, versions, command, ...).
    - `floors`: per metric, the noise floor: ``mean``, ``std`` (of one value), ``low`` and
      ``high`` (95% interval of the mean) and the ``values`` of the repeats.
    - `rows`: one dict per (solver, budget) cell: ``solver`` (label), ``budget``, ``nfe``
      used, ``status``, and for each score ``k`` its mean ``k`` with ``k_lo``/``k_hi`` (the
      interval), ``k_floor``, ``k_ratio`` (with Fieller's ``k_ratio_lo``/``k_ratio_hi``) and
      ``flags``.
    - `replicate_rows`: one dict per (cell, replicate) with the raw values.
    - `score_floors`: the floors of the other scores, as `floors`: the exact-target scores
      (`EXACT_METRICS`, between exact sets) and ``pathwise``, the accuracy of the pathwise
      reference (its distance to a solve 10 times tighter), the resolution of the pathwise
      errors.
    - `reference`: the row of the pathwise reference solve (solver label ``"reference"``,
      scored like the others), or None.
    """

    config: dict[str, Any]
    floors: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]]
    out_dir: Path | None = None
    replicate_rows: list[dict[str, Any]] = field(default_factory=list)
    score_floors: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: dict[str, Any] | None = None

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Comparison:
        """The comparison a run wrote to ``folder`` (its ``results.json``): every table,
        verdict and plot input can be recomputed from it without sampling again."""
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise ValueError(f"{str(folder)!r} holds no results.json of a comparison")
        d = json.loads(path.read_text())
        return cls(d["config"], d["floors"], d["rows"], Path(folder), d.get("replicates", []),
                   d.get("score_floors", {}), d.get("reference"))

    # ----- access ------------------------------------------------------------------------
    @property
    def metrics(self) -> dict[str, str]:
        """The sample-set distances of this comparison, name -> title, in order (the first
        is the headline's); a `results.json` without the record means the registry's."""
        return dict(self.config.get("metrics") or {k: m.title for k, m in METRICS.items()})

    @property
    def primary(self) -> str:
        """The headline metric: the first of `metrics` (``"sw2"`` by default)."""
        return next(iter(self.metrics))

    def cell(self, solver: str, budget: int | None) -> dict[str, Any] | None:
        """The row of ``solver`` (a label) at ``budget`` (``None``: an adaptive solver;
        ``"reference"``: the pathwise reference solve)."""
        if solver == "reference":
            return self.reference
        return next((r for r in self.rows if r["solver"] == solver and r["budget"] == budget),
                    None)

    def floor(self, metric: str) -> dict[str, Any] | None:
        """The noise floor of a score (`floors` or `score_floors`), or None."""
        return self.floors.get(metric) or self.score_floors.get(metric)

    def values(self, solver: str, budget: int | None, metric: str = "sw2") -> list[float]:
        """The per-replicate values of ``metric`` in a cell, in replicate order."""
        vals = [(r["replicate"], r[metric]) for r in self.replicate_rows
                if r["solver"] == solver and r["budget"] == budget and metric in r]
        return [v for _, v in sorted(vals)]

    @property
    def level(self) -> float:
        return float(self.config.get("level", 0.95))

    def _unit(self, metric: str) -> float | None:
        """The floor's mean when results are shown as ratios to it, else None."""
        fl = self.floors.get(metric)
        if fl is None:
            return None
        return fl["mean"] if fl["low"] > 0 else None

    def _fmt(self, r: dict[str, Any], metric: str) -> str:
        if r["status"] != "ok":
            return "—" if r["status"] == "unreachable" else r["status"]
        if metric not in r or r[metric] is None or not math.isfinite(r[metric]):
            if metric == "pathwise":
                return "(reference)" if r["solver"] == "reference" else "(stochastic)"
            return "n/a"
        unit = self._unit(metric)
        m, lo, hi = r[metric], r[f"{metric}_lo"], r[f"{metric}_hi"]
        if unit is not None:
            return f"{m / unit:.2f} ± {(hi - lo) / 2 / unit:.2f}"
        if metric == "avg_logp" and "logp_gap" in r:
            m, lo, hi = r["logp_gap"], r["logp_gap_lo"], r["logp_gap_hi"]
            return f"{m:+.3f} ± {(hi - lo) / 2:.3f}"
        return f"{m:.3g} ± {(hi - lo) / 2:.2g}"

    def _marks(self, r: dict[str, Any], metric: str) -> str:
        if r.get(metric) is None:
            return ""
        flags = r.get("flags") or []
        marks = ""
        if f"{metric} below floor" in flags:
            marks += " ↓"
        if any(f in flags for f in ("concentrated", "narrow")):
            marks += " ⊙"
        return marks

    # ----- tables ------------------------------------------------------------------------
    def headline(self, metric: str = "sw2", legend: bool = True) -> str:
        """Markdown table: ``metric`` for each solver (rows) and budget (columns), as mean ±
        half-width of the 95% interval over the replicates, in units of the noise floor when
        the metric has a positive floor; the NFE used in parentheses where it is below the
        column's budget (``at_most`` budgets); flags ↓ (below the noise floor) and ⊙
        (concentrated or narrow, exact targets). ``legend``: add the `legend` text under it."""
        budgets = self.config["budgets"]
        lines = ["| solver | grid | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
                 "|---|---|" + "---|" * len(budgets)]
        rows = ([self.reference] if self.reference else []) + self.rows
        for lab in list(dict.fromkeys(r["solver"] for r in rows)):
            rs = [r for r in rows if r["solver"] == lab]
            if rs[0]["budget"] is None:
                r = rs[0]
                cell = self._fmt(r, metric) + self._marks(r, metric)
                if r["status"] == "ok":
                    cell += f" (adaptive, NFE {r['nfe']})"
                lines.append(f"| {lab} | adaptive | {cell} |" + " |" * (len(budgets) - 1))
                continue
            cells = []
            for b in budgets:
                r = next((x for x in rs if x["budget"] == b), None)
                if r is None:
                    cells.append("")
                    continue
                c = self._fmt(r, metric) + self._marks(r, metric)
                if r["status"] == "ok" and r["nfe"] != b:
                    c += f" ({r['nfe']})"
                cells.append(c)
            lines.append(f"| {lab} | {rs[0].get('grid_used', '')} | " + " | ".join(cells) + " |")
        if legend:
            lines += ["", self.legend(metric)]
        return "\n".join(lines)

    def legend(self, metric: str = "sw2") -> str:
        """The text under `headline`: what the numbers are, the floor, the flags."""
        cfg = self.config
        reps, n = cfg.get("replicates", 1), cfg["n"]
        parts = [f"Mean ± half-width of the {self.level:.0%} t-interval over {reps} replicates "
                 f"of n = {n} samples (each with its own x_T and reference set)."]
        unit = self._unit(metric)
        fl = self.floor(metric)
        if unit is not None and fl is not None:
            parts.append(f"In units of the noise floor of {metric} ({fl['mean']:.4g}, 95% CI "
                         f"[{fl['low']:.4g}, {fl['high']:.4g}], {len(fl['values'])} pairs of "
                         f"{cfg.get('floor_sets', 'exact sets')}; one pair's spread "
                         f"± {fl['std'] / fl['mean']:.0%}): 1.00 "
                         "= as close as exact samples.")
        elif fl is not None and metric == "avg_logp":
            parts.append("Shown as the gap E_q log p − E_p log p to exact samples (nats; > 0: "
                         "more concentrated than the target).")
        if cfg.get("budget_mode") == "at_most":
            parts.append("Budgets are 'at most K': (k) is the NFE a solver used when it cannot "
                         "meet K exactly.")
        else:
            parts.append("Budgets are exact: — marks a budget the solver cannot meet.")
        if self.reference is not None:
            parts.append("reference: the tight adaptive PF-ODE solve of the pathwise errors.")
        if metric == "pathwise" and self.margin("pathwise") > 0:
            parts.append(f"The reference is accurate to about {self.margin('pathwise'):.2g} (its "
                         "distance to a solve 10 times tighter): pathwise errors below that are "
                         "not resolved, and verdicts need a difference larger than it.")
        parts.append(f"↓: significantly below the noise floor (Fieller/Welch {self.level:.0%}), "
                     "⊙: significantly more concentrated or narrower than the target (exact "
                     "log-density gap > 0 or variance ratio < 1): signs of under-dispersion, "
                     "which a distance to one finite reference set can reward.")
        return " ".join(parts)

    def verdicts(self, metric: str = "sw2") -> dict[int, Verdict]:
        """At each budget, what the paired differences between the fixed-grid solvers
        support (`stats.compare_to_leader`, Holm-corrected at ``1 − level``)."""
        out = {}
        for b in self.config["budgets"]:
            vals = {}
            for r in self.rows:
                if r["budget"] == b and r["status"] == "ok" and metric in r \
                        and r[metric] is not None and math.isfinite(r[metric]):
                    v = self.values(r["solver"], b, metric)
                    if len(v) >= 2:
                        vals[r["solver"]] = v
            if vals and len({len(v) for v in vals.values()}) == 1:
                out[b] = compare_to_leader(vals, self.level, margin=self.margin(metric))
        return out

    def margin(self, metric: str) -> float:
        """The smallest difference the verdicts count for ``metric``: for ``pathwise`` the
        accuracy of the reference solve (differences below it are not resolved), else 0."""
        fl = self.score_floors.get("pathwise") if metric == "pathwise" else None
        return max(fl["mean"], 0.0) if fl else 0.0

    def winners(self, metric: str = "sw2") -> dict[int, str]:
        """The solver the paired comparisons declare best at each budget: significantly
        better than every other solver there. Budgets where the leading solvers are
        indistinguishable are left out (see `verdicts`)."""
        return {b: v.best for b, v in self.verdicts(metric).items() if v.best is not None}

    def verdict_line(self, metric: str = "sw2") -> str:
        """One line per the CIs: at each budget the best solver, or the solvers that cannot
        be told apart, with the flags of those named."""
        vs = self.verdicts(metric)
        if not vs:
            return f"Verdict ({metric}): nothing to compare."
        parts = []
        unit = self._unit(metric) or 1.0
        for b, v in vs.items():
            txt = v.text()
            if v.best is not None and v.differences:
                lab, (d, _) = next(iter(v.differences.items()))
                txt += (f" (runner-up {lab} worse by {d.mean / unit:.2g}, 95% CI "
                        f"[{d.low / unit:.2g}, {d.high / unit:.2g}]"
                        f"{' floor units' if self._unit(metric) else ''})")
            flagged = [lab for lab in v.group if self._marks(self.cell(lab, b) or {}, metric)]
            if flagged:
                txt += " (flagged: " + ", ".join(
                    lab + self._marks(self.cell(lab, b), metric) for lab in flagged) + ")"
            parts.append(f"NFE {b}: {txt}")
        reps = self.config.get("replicates", 1)
        return (f"Verdict ({metric}, lower is better; paired differences over {reps} replicates, "
                f"Holm-corrected at {1 - self.level:.0%}): " + "; ".join(parts) + ".")

    def difference_table(self, metric: str = "sw2", top: int = 3) -> str:
        """Markdown table of the paired differences (other − leader) between the leader and
        the next ``top`` solvers at each budget: mean and 95% interval (in floor units where
        the headline uses them), Holm-adjusted p-value, and what it supports."""
        unit = self._unit(metric) or 1.0
        u = " (floor units)" if self._unit(metric) else ""
        lines = [f"| NFE | leader | other | other − leader{u} | 95% CI | Holm p | verdict |",
                 "|---|---|---|---|---|---|---|"]
        for b, v in self.verdicts(metric).items():
            for lab, (d, p) in list(v.differences.items())[:top]:
                verdict = "leader better" if lab in v.others else "indistinguishable"
                lines.append(f"| {b} | {v.leader} | {lab} | {d.mean / unit:+.3g} | "
                             f"[{d.low / unit:+.3g}, {d.high / unit:+.3g}] | {p:.2g} | {verdict} |")
        return "\n".join(lines)

    def grid_tables(self, metric: str = "sw2") -> str:
        """With several grids (``grids=``): for each budget a solver × grid table of
        ``metric`` (as in `headline`) and, per solver, the paired verdict between its grids."""
        grids = self.config.get("grids") or []
        if len(grids) < 2:
            return ""
        out = []
        for b in self.config["budgets"]:
            rows = [r for r in self.rows if r["budget"] == b and r.get("grid") in grids]
            bases = list(dict.fromkeys(r["base"] for r in rows))
            if not bases:
                continue
            lines = [f"NFE {b}:", "", "| solver | " + " | ".join(grids) + " | grids (paired) |",
                     "|---|" + "---|" * (len(grids) + 1)]
            for base in bases:
                cells, vals = [], {}
                for g in grids:
                    r = next((x for x in rows if x["base"] == base and x["grid"] == g), None)
                    cells.append("" if r is None else self._fmt(r, metric) + self._marks(r, metric))
                    if r is not None and r["status"] == "ok" and metric in r:
                        vals[g] = self.values(r["solver"], b, metric)
                verdict = compare_to_leader(vals, self.level).text() if len(vals) > 1 else ""
                lines.append(f"| {base} | " + " | ".join(cells) + f" | {verdict} |")
            out.append("\n".join(lines))
        return "\n\n".join(out)


# ----- scoring ---------------------------------------------------------------------------
def _score(x: Tensor, ref: Tensor, exact: GaussianMixture | None, metric_seed: int,
           path_ref: Tensor | None, metrics: dict[str, Metric]) -> dict[str, float]:
    """All scores of one replicate's samples ``x`` (its event shape) against ``ref``."""
    x64 = x.detach().double().cpu()
    flat = x64.reshape(x64.shape[0], -1)
    out = {name: m(flat, ref.reshape(ref.shape[0], -1), metric_seed) for name, m in metrics.items()}
    if exact is not None:
        out.update(_exact_scores(x64, exact))
    if path_ref is not None:
        out["pathwise"] = float((flat - path_ref.double().cpu().reshape(flat.shape)
                                 ).norm(dim=1).mean())
    return out


def _exact_scores(x64: Tensor, exact: GaussianMixture, only: str | None = None
                  ) -> dict[str, float] | float:
    """The `EXACT_METRICS` of samples ``x64`` (event shape), or just the one named ``only``."""
    flat = x64.reshape(x64.shape[0], -1)
    fns = {
        "avg_logp": lambda: float(exact.log_prob(x64).mean()),
        "ksd": lambda: float(kernel_stein_discrepancy(flat, exact.data_score(x64).reshape(
            flat.shape))),
        "mean_error": lambda: float(mean_cov_errors(flat, exact.mean, exact.covariance
                                                    )["mean_error"]),
        "cov_error": lambda: float(mean_cov_errors(flat, exact.mean, exact.covariance
                                                   )["cov_error"]),
        "var_ratio": lambda: float((flat - flat.mean(0)).square().sum() / (flat.shape[0] - 1))
        / float(torch.trace(exact.covariance)),
    }
    if only is not None:
        return fns[only]()
    return {k: f() for k, f in fns.items()}


def _summarise(row: dict[str, Any], reps: list[dict[str, float]], floors: dict[str, dict[str, Any]],
               level: float, metrics: dict[str, Metric]) -> None:
    """Means, intervals, floor ratios and flags of a cell from its replicates' values."""
    flags = []
    for k in reps[0]:
        vals = [d[k] for d in reps]
        if len(vals) >= 2:
            ci = t_interval(vals, level)
            row.update({k: ci.mean, f"{k}_lo": ci.low, f"{k}_hi": ci.high, f"{k}_se": ci.se})
        else:
            row.update({k: vals[0], f"{k}_lo": math.nan, f"{k}_hi": math.nan, f"{k}_se": math.nan})
        fl = floors.get(k)
        if fl is None:
            continue
        row[f"{k}_floor"] = fl["mean"]
        if len(vals) < 2:
            continue
        diff = welch_difference(vals, fl["values"], level)
        if k == "avg_logp":
            row.update(logp_gap=diff.mean, logp_gap_lo=diff.low, logp_gap_hi=diff.high)
        elif k in metrics:
            ratio, lo, hi = ratio_interval(vals, fl["values"], level)
            row.update({f"{k}_ratio": ratio, f"{k}_ratio_lo": lo, f"{k}_ratio_hi": hi})
        direction = -1 if k in metrics else EXACT_METRICS.get(k, ("", 0))[1]
        if (direction < 0 and diff.high < 0) or (direction > 0 and diff.low > 0):
            flags.append(FLAG_NAMES.get(k, f"{k} below floor"))
    row["flags"] = flags


# ----- engine ----------------------------------------------------------------------------
def compare(target: Target, solvers: Sequence[str | SolverSpec] | None = None,
            budgets: Sequence[int] = DEFAULT_BUDGETS, *, n: int = 2000, replicates: int = 5,
            budget_mode: str = "at_most", grids: Sequence[str] | None = None, seed: int = 0,
            t_end: float | None = None, out_dir: str | os.PathLike | None = None,
            floor_repeats: int = 10, pathwise: bool = True, reference_tol: float | None = None,
            dtype: torch.dtype = torch.float32, level: float = 0.95, progress: bool = True,
            trajectories: bool | Sequence[str] = True, overwrite: bool = False,
            command: str | None = None,
            metrics: Sequence[str | Metric] | None = None, shard: bool = False) -> Comparison:
    """Run every solver at every budget, ``replicates`` times, and score the samples.

    **Arguments:**
    - ``target``: a `Target` (`builtin_target`, `checkpoint_target`).
    - ``solvers``: specs like ``"ddim:eta=0.5"``, ``"pf_ode:method=rk4"``,
      ``"dpm_solver:grid=uniform"``, ``"pf_ode:adaptive=1,rtol=1e-5"``; default
      `default_solvers`. Labels must be distinct.
    - ``budgets``: total NFE budgets (denoising step included).
    - ``n``: samples per replicate (and size of each reference set).
    - ``replicates``: independent replicates $R \\ge 2$ (intervals need two; 5 by default).
    - ``budget_mode``: ``"at_most"`` (each solver at its largest budget ≤ K; the NFE used is
      recorded) or ``"exact"`` (exactly K, else ``unreachable``).
    - ``grids``: time-grid names (`GRIDS`); every spec without its own ``grid=`` runs on each.
    - ``seed``: a non-negative integer from which all randomness derives
      (`replicate_generator`).
    - ``floor_repeats``: pairs of exact sets for the noise floors (at least 2).
    - ``pathwise``: also solve the PF-ODE adaptively from each $x_T$ with
      ``rtol = atol = reference_tol`` (default 1e-7 in float64, 1e-6 in float32) and report
      deterministic solvers' distance to it (the ``reference`` row scores that solve itself).
    - ``dtype``: dtype of $x_T$ and the solves (float32 by default; float64 for
      exact targets when pathwise errors below ~1e-5 matter).
    - ``level``: confidence level of every interval and test (0.95).
    - ``out_dir``: where rows, tables and plots go (``None``: nothing written), built in a
      temporary folder renamed to ``out_dir`` at the end (`scoresde.files.atomic_folder`);
      an interrupted run keeps its finished rows in ``<out_dir>.interrupted-<time>``.
    - ``overwrite``: replace a non-empty ``out_dir`` (only once the new run has finished);
      without it a non-empty ``out_dir`` is a `ValueError` before any work is done.
    - ``trajectories``: plot sample paths (2-D targets): ``True`` for one solver of each
      kind, a list of solver labels, or ``False``.
    - ``metrics``: the sample-set distances, as names in
      [`METRICS`][scoresde.evaluation.metrics.METRICS] or `Metric` objects (e.g.
      ``feature_metric("fd", featurize, register=False)``); the first is the headline's.
      Default: every registered metric. Samples and reference sets reach them flattened,
      ``(n, prod(event_shape))``.
    - ``shard``: under a `torch.distributed` process group (torchrun), divide the distinct
      (solver, NFE) cells among the ranks (every rank must call `compare`); every rank gets
      the same `Comparison`, identical to one process's (wall times aside), and only rank 0
      writes ``out_dir`` and shows progress. The set-up -- reference sets, noise floors, the
      pathwise reference solve -- runs on every rank (deterministic, from ``seed``).
      ([`scoresde.evaluation.sharding`][scoresde.evaluation.sharding]; without a process
      group it does nothing.)

    **Returns:** a `Comparison`.
    """
    specs = [s if isinstance(s, SolverSpec) else SolverSpec.parse(s)
             for s in (solvers if solvers is not None else default_solvers())]
    if not specs:
        raise ValueError("no solvers to compare")
    if budget_mode not in BUDGET_MODES:
        raise ValueError(f"budget_mode must be one of {BUDGET_MODES}, got {budget_mode!r}")
    if grids is not None:
        grids = list(dict.fromkeys(str(g) for g in grids))
        unknown = [g for g in grids if g not in GRIDS]
        if unknown or not grids:
            raise ValueError(f"unknown grid(s) {unknown}; registered grids: {sorted(GRIDS)}")
        specs = [s if (s.adaptive or s.grid is not None) else dataclasses.replace(s, grid=g)
                 for s in specs for g in ([None] if (s.adaptive or s.grid is not None) else grids)]
    for s in specs:
        if s.grid is not None and s.grid not in GRIDS:
            raise ValueError(f"unknown grid {s.grid!r} in {s.label}; registered grids: {sorted(GRIDS)}")
    chosen = _metric_set(metrics)
    labels = [s.label for s in specs]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ValueError(f"solver specs must be distinct, got {dup} more than once")
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 2:
        raise ValueError(f"budgets must be integers >= 2 (one step plus denoising), got {budgets}")
    check_int("n", n, 10)
    check_int("replicates", replicates, 2)
    check_int("floor_repeats", floor_repeats, 2)
    check_int("seed", seed, 0)
    level = check_real("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if reference_tol is None:
        reference_tol = 1e-7 if dtype == torch.float64 else 1e-6
    reference_tol = check_real("reference_tol", reference_tol, low=0.0, low_open=True)
    t_end = target.model.sde.sample_eps if t_end is None else float(t_end)
    rank = rank_and_world()[0] if shard else 0
    opts = dict(n=n, replicates=replicates, budget_mode=budget_mode, grids=grids, seed=seed,
                t_end=t_end, floor_repeats=floor_repeats, pathwise=pathwise,
                reference_tol=reference_tol, dtype=dtype, level=level,
                progress=progress and rank == 0, trajectories=trajectories, command=command,
                metrics=chosen, shard=shard)
    if out_dir is None:
        return _run(target, specs, budgets, None, **opts)
    dest = check_output_folder(out_dir, overwrite)   # before any work: refuse early
    if rank != 0:                                    # under torchrun, rank 0 writes
        return _run(target, specs, budgets, None, **opts)
    with atomic_folder(dest, overwrite=overwrite) as work:
        comp = _run(target, specs, budgets, work, **opts)
    comp.out_dir = dest
    return comp


def _metric_set(metrics: Sequence[str | Metric] | None) -> dict[str, Metric]:
    """The metrics of a comparison by name: the registry's by default; names looked up in
    `METRICS`; `Metric` objects as they are."""
    if metrics is None:
        return dict(METRICS)
    if isinstance(metrics, (str, Metric)):
        metrics = [metrics]
    out: dict[str, Metric] = {}
    for m in metrics:
        if isinstance(m, str):
            if m not in METRICS:
                raise ValueError(f"unknown metric {m!r}; registered metrics: {list(METRICS)} (or "
                                 "pass a Metric, e.g. from feature_metric(..., register=False))")
            m = METRICS[m]
        elif not isinstance(m, Metric):
            raise TypeError(f"metrics must be names or Metric objects, got {type(m).__name__}")
        if m.name in out or m.name in EXACT_METRICS or m.name == "pathwise":
            raise ValueError(f"metric name {m.name!r} is given twice or is one of the "
                             "comparison's own scores")
        out[m.name] = m
    if not out:
        raise ValueError("metrics must name at least one metric")
    return out


def _floors(target: Target, n: int, repeats: int, seed: int, metric_seed: int,
            level: float, metrics: dict[str, Metric]) -> dict[str, dict[str, Any]]:
    """Every score between pairs of independent exact sets of size n (`noise_floor`; the
    same pairs for every score): the first set from `target.floor_sample` when the target
    has one (other real images than the reference's), the second from `target.sample`."""
    def draw(m: int, g: torch.Generator) -> Tensor:
        return target.sample(m, g).double()

    first, second = draw, None
    if target.floor_sample is not None:
        floor_sample = target.floor_sample
        first, second = (lambda m, g: floor_sample(m, g).double()), draw
    fns: dict[str, Any] = {k: (lambda x, y, m=m: m(x.reshape(x.shape[0], -1),
                                                  y.reshape(y.shape[0], -1), metric_seed))
                           for k, m in metrics.items()}
    if target.exact is not None:
        for k in EXACT_METRICS:
            fns[k] = lambda x, y, k=k: _exact_scores(x, target.exact, only=k)
    out = {}
    for k, fn in fns.items():
        nf = noise_floor(fn, first, n, replicate_generator(seed, 0, _FLOOR), repeats=repeats,
                         reference_sampler=second)
        v = nf.values.tolist()
        ci = t_interval(v, level)
        out[k] = {"mean": ci.mean, "std": nf.std, "low": ci.low, "high": ci.high, "values": v}
    return out


def _nfe_for(spec: SolverSpec, budget: int | None, mode: str, per_call: int = 1
             ) -> tuple[int | None, str | None]:
    """The NFE a spec runs with at ``budget``, or (None, why) if it cannot; a model that
    counts ``per_call`` evaluations per call (``model.evals_per_call``, e.g. classifier-free
    guidance) is charged for them, so budgets stay equal work."""
    if budget is None or mode == "exact":
        return budget, None
    slv = spec.make()
    steps = slv.steps_within(budget // per_call, extra=1)
    if steps == 0:
        cost = f"{slv.cost_formula()} + 1"
        cost = f"{per_call} x ({cost})" if per_call != 1 else cost
        return None, (f"solver {spec.label!r} needs more than {budget} evaluations for one step "
                      f"plus denoising ({cost})")
    return per_call * (slv.nfe_for_steps(steps) + 1), None


def _run(target: Target, specs: list[SolverSpec], budgets: list[int], out: Path | None, *,
         n: int, replicates: int, budget_mode: str, grids: list[str] | None, seed: int,
         t_end: float, floor_repeats: int, pathwise: bool, reference_tol: float,
         dtype: torch.dtype, level: float, progress: bool, trajectories: bool | Sequence[str],
         command: str | None, metrics: dict[str, Metric], shard: bool = False) -> Comparison:
    t_start = time.perf_counter()
    model, sde = target.model, target.model.sde
    R = replicates
    if out is not None:
        (out / "rows.jsonl").write_text("")
    metric_seed = int(np.random.SeedSequence([seed, 4]).generate_state(1)[0])
    refs = [target.sample(n, replicate_generator(seed, r, _REFERENCE)).double() for r in range(R)]
    event_shape = tuple(refs[0].shape[1:])
    x_T = torch.cat([sde.prior_sample((n, *event_shape), replicate_generator(seed, r, _X_T),
                                      dtype=dtype).to(model.device) for r in range(R)])
    all_floors = _floors(target, n, floor_repeats, seed, metric_seed, level, metrics)
    floors = {k: v for k, v in all_floors.items() if k in metrics}
    score_floors = {k: v for k, v in all_floors.items() if k not in metrics}
    config: dict[str, Any] = {
        "target": target.name, "target_description": target.description, "sde": sde.config(),
        "solvers": [s.label for s in specs], "budgets": budgets, "budget_mode": budget_mode,
        "grids": grids, "n": n, "replicates": R, "seed": seed, "level": level,
        "floor_repeats": floor_repeats, "t_end": t_end, "dtype": str(dtype).replace("torch.", ""),
        "metrics": {k: m.title for k, m in metrics.items()},
        **({"floor_sets": "real sets (a training-split draw, a held-out draw)"}
           if target.floor_sample is not None else {}),
        "command": command or " ".join(sys.argv), "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                    "device": str(model.device),
                    "processes": rank_and_world()[1] if shard else 1},
    }
    if "avg_logp" in score_floors:
        config["target_avg_logp"] = score_floors["avg_logp"]["mean"]

    rows: list[dict[str, Any]] = []
    rep_rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any], reps: list[dict[str, float]] | None,
               cell: bool = True) -> None:
        if reps:
            _summarise(row, reps, all_floors, level, metrics)
            for r, d in enumerate(reps):
                rep_rows.append({"solver": row["solver"], "budget": row["budget"],
                                 "nfe": row["nfe"], "replicate": r, **d})
        if cell:
            rows.append(row)
        if out is not None:
            if cell:
                with open(out / "rows.jsonl", "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
                write_csv(out / "results.csv", rows)
            write_csv(out / "replicates.csv", rep_rows)

    def split(x: Tensor) -> list[Tensor]:
        return [x[r * n:(r + 1) * n] for r in range(R)]

    path_ref: list[Tensor] | None = None
    reference: dict[str, Any] | None = None
    if pathwise:
        t0 = time.perf_counter()
        try:
            res = sample(model, solver="pf_ode", nfe=None, x_T=x_T, t_end=t_end,
                         rtol=reference_tol, atol=reference_tol)
        except SamplingError as e:
            config["reference"] = {"failed": str(e)}
        else:
            path_ref = split(res.x)
            config["reference"] = {"solver": "pf_ode (dopri5, adaptive)", "rtol": reference_tol,
                                   "atol": reference_tol, "nfe": res.nfe}
            try:     # the reference's own accuracy: its distance to a 10x tighter solve
                tight = split(sample(model, solver="pf_ode", nfe=None, x_T=x_T, t_end=t_end,
                                     rtol=reference_tol / 10, atol=reference_tol / 10).x)
            except SamplingError:
                tight = None
            if tight is not None:
                acc = [float((a.double() - b.double()).reshape(n, -1).norm(dim=1).mean().cpu())
                       for a, b in zip(path_ref, tight, strict=True)]
                ci = t_interval(acc, level)
                score_floors["pathwise"] = all_floors["pathwise"] = {
                    "mean": ci.mean, "std": float(np.std(acc, ddof=1)), "low": ci.low,
                    "high": ci.high, "values": acc}
            row = {"solver": "reference", "name": "pf_ode", "options": json.dumps(
                {"rtol": reference_tol, "atol": reference_tol}), "base": "reference",
                "grid": None, "grid_used": "adaptive", "adaptive": True, "budget": None,
                "status": "ok", "nfe": res.nfe, "wall_s": time.perf_counter() - t0}
            record(row, [_score(xr, refs[r], target.exact, metric_seed, None, metrics)
                         for r, xr in enumerate(path_ref)], cell=False)
            reference = row

    runs = [(s, None) for s in specs if s.adaptive] + \
           [(s, b) for s in specs if not s.adaptive for b in budgets]
    # (label, nfe) -> ("ok", reps, wall, first samples, nfe used) or (status, message)
    done: dict[tuple[str, int | None], tuple[Any, ...]] = {}
    kept: dict[tuple[str, int], Tensor] = {}

    def solve_cell(spec: SolverSpec, nfe: int | None) -> tuple[Any, ...]:
        slv = spec.make()
        t0 = time.perf_counter()
        try:
            res = sample(model, solver=slv, nfe=nfe, x_T=x_T,
                         generator=replicate_generator(seed, 0, _SOLVER), t_end=t_end,
                         grid=spec.grid)
        except BudgetError as e:
            return ("unreachable", str(e))
        except SamplingError as e:
            return ("failed", str(e))
        wall = time.perf_counter() - t0
        xs = split(res.x)
        deterministic = path_ref is not None and not slv.stochastic
        reps = [_score(xr, refs[r], target.exact, metric_seed,
                       path_ref[r] if deterministic else None, metrics) for r, xr in enumerate(xs)]
        return ("ok", reps, wall, xs[0][:1500].cpu(), res.nfe)

    rank, world = rank_and_world() if shard else (0, 1)
    if world > 1:     # each rank solves its share of the distinct cells; every rank gets all
        cells: dict[tuple[str, int | None], SolverSpec] = {}
        for spec, b in runs:
            nfe, why = _nfe_for(spec, b, budget_mode, model.evals_per_call)
            if why is None:
                cells.setdefault((spec.label, nfe), spec)
        mine = [(spec, nfe) for (_, nfe), spec in list(cells.items())[rank::world]]

        def solve_mine() -> dict[tuple[str, int | None], tuple[Any, ...]]:
            return {(spec.label, nfe): solve_cell(spec, nfe)
                    for spec, nfe in tqdm(mine, disable=not progress, desc=f"compare (rank 0 of "
                                          f"{world})", dynamic_ncols=True)}

        for part in all_gather_object(run_on_every_rank(solve_mine)):
            done.update(part)
    bar = tqdm(runs, disable=not progress or world > 1, desc="compare", dynamic_ncols=True)
    try:
        for spec, budget in bar:
            slv = spec.make()
            row: dict[str, Any] = {
                "solver": spec.label, "name": spec.name, "options": json.dumps(spec.options),
                "base": dataclasses.replace(spec, grid=None).label, "grid": spec.grid,
                "grid_used": "adaptive" if spec.adaptive else (
                    spec.grid or grid_label(slv.default_grid, sde)),
                "adaptive": spec.adaptive, "budget": budget, "stochastic": bool(slv.stochastic)}
            nfe, why = _nfe_for(spec, budget, budget_mode, model.evals_per_call)
            bar.set_postfix_str(f"{spec.label} nfe={nfe}")
            if why is not None:
                row.update(status="unreachable", message=why, nfe=None)
                record(row, None)
                continue
            key = (spec.label, nfe)
            if key not in done:
                done[key] = solve_cell(spec, nfe)
            if done[key][0] != "ok":
                row.update(status=done[key][0], message=done[key][1], nfe=None)
                record(row, None)
                continue
            _, reps, wall, first, used = done[key]
            row.update(status="ok", nfe=used, wall_s=wall)
            kept[(spec.label, budget if budget is not None else -1)] = first
            record(row, reps)
    finally:
        bar.close()
    config["seconds"] = time.perf_counter() - t_start
    comp = Comparison(config, floors, rows, out, rep_rows, score_floors, reference)
    if out is not None:
        write_json(out / "results.json", {"config": config, "floors": floors,
                                          "score_floors": score_floors, "rows": rows,
                                          "reference": reference, "replicates": rep_rows})
        write_report(comp, model, refs[0], kept, specs, budgets, trajectories, x_T[:n], t_end)
    return comp
