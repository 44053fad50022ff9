r"""Optimised time grids: the $K$ times that minimise a solver's error on calibration draws.

Given a model, a deterministic solver and a budget, `optimize_grid` chooses the interior
times of the solver's grid to minimise its mean pathwise error at $t_\text{end}$,

$$ E(t_1, \dots, t_{n-1}) = \frac1B \sum_{b=1}^B \big\| \Phi_\text{solver}(x_T^{(b)}; T, t_1,
\dots, t_{n-1}, t_\text{end}) - \Phi_\text{ref}(x_T^{(b)}) \big\|, $$

against a tight adaptive solve $\Phi_\text{ref}$ of the probability-flow ODE from the same
calibration draws $x_T^{(b)}$ (both denoised by default, as `sample` does). This is the idea of
"Align Your Steps" (Sabour, Fidler & Kreis 2024), which optimises the schedule per solver and
model, and of GITS (Chen et al. 2024), which searches it against a teacher trajectory; here the
objective is the solver's actual end-point error rather than a bound on it, minimised by a
derivative-free search (scipy's Powell method) because $n - 1 \le 50$ is small.

**Parameterisation.** The grid is built in log-SNR $\lambda(t) = \log(\alpha^2/\sigma^2)$ from
unconstrained logits $\theta \in \mathbb R^{n-1}$ (the $n$-th is fixed at 0):
$\lambda_i = \lambda(T) + (\lambda(t_\text{end}) - \lambda(T)) \sum_{j \le i}
\operatorname{softmax}(\theta, 0)_j$, so every $\theta$ is a valid strictly decreasing grid
from $T$ to $t_\text{end}$. The search starts from a built-in grid (by default the best of the
registered rules on the calibration draws) and never returns a grid worse than its start on the
calibration set.

**Cost.** One reference solve of the calibration batch (a few hundred evaluations at
``reference_tol = 1e-9``) plus ``n_evals`` solver runs of ``nfe`` evaluations each, all on the
calibration batch: `OptimizedGrid.cost_nfe` counts them (network calls on the whole batch) and
`OptimizedGrid.seconds` times them. Results can be cached (``cache_dir`` plus a model
``fingerprint``) and reused: `OptimizedGrid.save` / `OptimizedGrid.load`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..files import write_text_atomic
from ..models import ScoreModel, check_model
from ..sdes import SDE
from ..validation import check_int, check_positive
from .base import SamplingError, Solver
from .grids import GRIDS, TimeGrid, get_grid
from .registry import make_solver
from .sampling import sample

Tensor = torch.Tensor

__all__ = ["OptimizedGrid", "optimize_grid", "grid_error"]

_FORMAT = 1  # bump when the cache's meaning changes


class OptimizedGrid(TimeGrid):
    """A grid found by `optimize_grid`: fixed times for one SDE, solver, budget and end time.

    Use it as ``sd.sample(model, solver=..., nfe=opt.nfe, grid=opt)`` (or ``grid=opt.times``).
    Called for another SDE, number of steps or end time it raises ``ValueError``.

    **Attributes:** `times` (float64, ``(n_steps + 1,)``, from ``T`` to ``t_end``); `solver`
    (the solver's ``repr``, options included); `nfe`; `denoise`; `sde` (its ``config()``);
    `fingerprint` (the caller's name for the model, or None); `init` (the grid the search started
    from); `calibration_error` and `init_error` (mean pathwise error on the calibration draws,
    after and before); `n_calib`; `n_evals` (solver runs on the calibration batch, the start's
    included); `cost_nfe` (network
    evaluations of the calibration batch, reference solve included); `seconds`; `key` (the
    cache key).
    """

    name = "optimized"

    def __init__(self, times: Tensor, *, solver: str, nfe: int, denoise: bool, sde: dict[str, Any],
                 fingerprint: str | None = None, init: str = "", calibration_error: float = math.nan,
                 init_error: float = math.nan, n_calib: int = 0, n_evals: int = 0, cost_nfe: int = 0,
                 seconds: float = 0.0, key: str = "") -> None:
        t = torch.as_tensor(times, dtype=torch.float64).detach().cpu().clone()
        if t.dim() != 1 or t.shape[0] < 2 or not bool((t[1:] < t[:-1]).all()):
            raise ValueError("an OptimizedGrid's times must be a strictly decreasing 1-d tensor of "
                             "at least two times")
        self.times = t
        self.solver, self.nfe, self.denoise, self.sde = solver, int(nfe), bool(denoise), dict(sde)
        self.fingerprint, self.init = fingerprint, init
        self.calibration_error, self.init_error = float(calibration_error), float(init_error)
        self.n_calib, self.n_evals, self.cost_nfe = int(n_calib), int(n_evals), int(cost_nfe)
        self.seconds, self.key = float(seconds), key

    @property
    def n_steps(self) -> int:
        return self.times.shape[0] - 1

    @property
    def t_end(self) -> float:
        return float(self.times[-1])

    def __call__(self, sde: SDE, n_steps: int, t_end: float) -> Tensor:
        if sde.config() != self.sde:
            raise ValueError(f"this grid was optimised for the SDE {self.sde}, not {sde.config()}")
        if n_steps != self.n_steps or float(t_end) != self.t_end:
            raise ValueError(f"this grid has {self.n_steps} steps ending at t_end = {self.t_end!r} "
                             f"(nfe={self.nfe} for {self.solver}); asked for {n_steps} steps ending "
                             f"at {t_end!r}")
        return self.times.clone()

    def _grid(self, sde: SDE, n: int, t_end: float) -> Tensor:
        return self.times.clone()

    @property
    def label(self) -> str:
        return f"optimized({self.solver}, nfe={self.nfe})"

    def __repr__(self) -> str:
        return (f"OptimizedGrid({self.solver}, nfe={self.nfe}, error {self.init_error:.3g} -> "
                f"{self.calibration_error:.3g} on {self.n_calib} calibration draws)")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (times as float64 values, exact in JSON)."""
        return {"format": _FORMAT, "times": self.times.tolist(), "solver": self.solver,
                "nfe": self.nfe, "denoise": self.denoise, "sde": self.sde,
                "fingerprint": self.fingerprint, "init": self.init,
                "calibration_error": self.calibration_error, "init_error": self.init_error,
                "n_calib": self.n_calib, "n_evals": self.n_evals, "cost_nfe": self.cost_nfe,
                "seconds": self.seconds, "key": self.key}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptimizedGrid:
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"not an optimised grid of format {_FORMAT}: {str(d)[:200]}")
        d = dict(d)
        d.pop("format")
        times = torch.tensor(d.pop("times"), dtype=torch.float64)
        return cls(times, **d)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the grid as JSON, atomically. **Returns:** the path."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> OptimizedGrid:
        """Read a grid written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def grid_error(model: ScoreModel, solver: str | Solver, nfe: int, x_T: Tensor, reference: Tensor,
               grid: str | TimeGrid | Tensor, *, t_end: float | None = None,
               denoise: bool = True) -> float:
    r"""Mean pathwise error $\frac1B\sum_b \|x^{(b)} - x_\text{ref}^{(b)}\|$ of ``solver`` on
    ``grid`` (anything `sample` takes) from ``x_T`` against ``reference`` (the same draws, e.g.
    a tight PF-ODE solve); ``inf`` if the solve produced NaN/Inf."""
    try:
        x = sample(model, solver=solver, nfe=nfe, x_T=x_T, grid=grid, t_end=t_end,
                   denoise=denoise).x
    except SamplingError:
        return math.inf
    err = float((x - reference).reshape(x.shape[0], -1).double().norm(dim=1).mean())
    return err if math.isfinite(err) else math.inf


def _digest(x: Tensor) -> str:
    return hashlib.sha256(x.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()).hexdigest()


def optimize_grid(model: ScoreModel, solver: str | Solver, nfe: int,
                  shape: tuple[int, ...] | None = None, *, x_T: Tensor | None = None,
                  generator: torch.Generator | None = None, t_end: float | None = None,
                  denoise: bool = True, init: str | TimeGrid | Tensor = "best",
                  reference_tol: float = 1e-9, max_evals: int | None = None,
                  cache_dir: str | os.PathLike | None = None, fingerprint: str | None = None,
                  **options: Any) -> OptimizedGrid:
    r"""Choose the times of ``solver``'s grid at budget ``nfe`` that minimise its mean pathwise
    error against a tight PF-ODE solve on calibration draws (see the module's docstring).

    **Arguments:**
    - ``model``: a `ScoreModel`; ``solver``: a deterministic solver (name or instance;
      ``**options`` go to its constructor); ``nfe``: the exact budget, the final denoising step
      included when ``denoise``.
    - ``shape``, ``x_T``, ``generator``: the calibration draws: ``x_T`` (``(B, *event_shape)``),
      or ``B`` draws from the prior of shape ``shape`` with ``generator``. A few hundred suffice
      (256 in the tests and docs).
    - ``t_end``: the end time (default ``model.sde.sample_eps``).
    - ``init``: the start of the search: ``"best"`` (default: the registered rule in `GRIDS`
      with the smallest calibration error, each distinct grid tried once), a grid name, a
      `TimeGrid`, or a tensor of times.
    - ``reference_tol``: rtol = atol of the reference dopri5 solve.
    - ``max_evals``: objective evaluations allowed to the search (default ``40 (n - 1)`` for
      ``n`` steps, at least 100).
    - ``cache_dir``, ``fingerprint``: with both, the result is stored in ``cache_dir`` as JSON
      under a key of (solver and options, budget, SDE, end time, the caller's model
      ``fingerprint``, settings, calibration draws), and returned from there the next time (a
      cache needs a fingerprint: nothing else tells two models apart).

    **Returns:** an `OptimizedGrid` (a `TimeGrid`), usable as ``sample(..., nfe=nfe, grid=opt)``.

    **Raises:** ``ValueError`` for a stochastic solver (its error is not a function of the
    grid alone), a budget the solver cannot meet (`BudgetError`), or bad arguments.
    """
    from scipy.optimize import minimize

    check_model(model)
    slv = make_solver(solver, **options)
    if slv.stochastic:
        raise ValueError(f"optimize_grid needs a deterministic solver; {slv!r} is stochastic")
    check_positive("reference_tol", reference_tol)
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise TypeError(f"fingerprint must be a string naming the model, got {type(fingerprint).__name__}")
    if cache_dir is not None and fingerprint is None:
        raise ValueError("a cache_dir needs a model fingerprint (a string naming the model, e.g. its "
                         "checkpoint's hash): nothing else tells two models apart")
    sde = model.sde
    t_end = sde.sample_eps if t_end is None else float(t_end)
    if not 0.0 < t_end < sde.T:
        raise ValueError(f"t_end must lie in (0, T) = (0, {sde.T}), got {t_end}")
    n = slv.steps_for_nfe(nfe, extra=int(denoise))
    budget = max(100, 40 * (n - 1)) if max_evals is None else check_int("max_evals", max_evals, 1)
    if x_T is None:
        if shape is None:
            raise ValueError("give the calibration draws x_T or their shape (B, *event_shape)")
        x_T = sde.prior_sample(tuple(shape), generator, dtype=torch.get_default_dtype(),
                               device=model.device)
    init_label = init if isinstance(init, str) else (init.label if isinstance(init, TimeGrid)
                                                       else "explicit")
    key = hashlib.sha256(json.dumps({
        "format": _FORMAT, "solver": repr(slv), "nfe": nfe, "denoise": denoise, "t_end": t_end,
        "sde": sde.config(), "fingerprint": fingerprint, "init": init_label if isinstance(
            init, str | TimeGrid) else _digest(init), "reference_tol": reference_tol,
        "max_evals": budget, "calibration": _digest(x_T), "dtype": str(x_T.dtype)},
        sort_keys=True).encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"grid-{key}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        return OptimizedGrid.load(path)

    start, t0 = model.n_evals, time.perf_counter()
    ref = sample(model, solver="pf_ode", nfe=None, x_T=x_T, t_end=t_end, denoise=denoise,
                 rtol=reference_tol, atol=reference_tol).x

    n_evals = [0]

    def error(times: Tensor) -> float:
        n_evals[0] += 1
        return grid_error(model, slv, nfe, x_T, ref, times, denoise=denoise)

    if isinstance(init, str) and init == "best":
        cands: dict[str, Tensor] = {}
        for name in GRIDS:   # each distinct grid once (polyexponential's default is logsnr)
            g = get_grid(name)(sde, n, t_end)
            if not any(torch.allclose(g, h, rtol=1e-12, atol=0.0) for h in cands.values()):
                cands[name] = g
        errs = {name: error(g) for name, g in cands.items()}
        init_label = min(errs, key=lambda k: errs[k])
        g0, init_error = cands[init_label], errs[init_label]
    elif isinstance(init, Tensor):
        g0 = init.detach().to("cpu", torch.float64)
        if g0.shape != (n + 1,) or float(g0[0]) != sde.T or float(g0[-1]) != t_end:
            raise ValueError(f"an explicit init grid must have {n + 1} times from T = {sde.T} to "
                             f"t_end = {t_end}")
    else:
        g0 = get_grid(init)(sde, n, t_end)
    if not (isinstance(init, str) and init == "best"):
        init_error = error(g0)
    best = [g0, init_error]
    if n > 1:
        lam = sde.log_snr(g0)
        span = float(lam[-1] - lam[0])
        logits0 = torch.log(torch.diff(lam) / span)
        x0 = (logits0[:-1] - logits0[-1]).numpy()
        tail = torch.zeros(1, dtype=torch.float64)

        def times_of(theta: Any) -> Tensor:
            w = torch.softmax(torch.cat([torch.as_tensor(theta, dtype=torch.float64).clamp(-40, 40),
                                         tail]), 0)
            g = sde.log_snr_inverse(lam[0] + span * torch.cat([tail, torch.cumsum(w, 0)]))
            g[0], g[-1] = sde.T, t_end
            return g

        def objective(theta: Any) -> float:
            g = times_of(theta)
            if not bool(torch.isfinite(g).all()) or not bool((g[1:] < g[:-1]).all()):
                return math.inf
            e = error(g)
            if e < best[1]:
                best[:] = [g, e]
            return e

        minimize(objective, x0, method="Powell",
                 options={"maxfev": budget, "xtol": 1e-3, "ftol": 1e-4})
    opt = OptimizedGrid(best[0], solver=repr(slv), nfe=nfe, denoise=denoise, sde=sde.config(),
                        fingerprint=fingerprint, init=init_label, calibration_error=best[1],
                        init_error=init_error, n_calib=x_T.shape[0], n_evals=n_evals[0],
                        cost_nfe=model.n_evals - start, seconds=time.perf_counter() - t0, key=key)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        opt.save(path)
    return opt
