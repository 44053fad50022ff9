"""The one entry point, `sample`: same noise, same budget, any solver."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..dynamics import tweedie_denoise
from ..models import ScoreModel, check_model
from ..rng import PerSampleNoise
from ..validation import check_batch, check_cond, check_finite
from .base import AdaptiveSolver, BudgetError, SamplingError, SeedError, Solver, StepCallback
from .grids import TimeGrid, get_grid
from .registry import adaptive_solvers, make_solver

Tensor = torch.Tensor

__all__ = ["sample", "SampleResult", "MAX_STEPS", "MAX_TRAJECTORY_BYTES"]

#: the most grid steps a fixed-grid solve takes: the solvers keep five float64 host
#: coefficients per grid point (about 0.2 kB per step with Python's float objects), so 10^6
#: steps hold ~200 MB; larger budgets are refused before anything is allocated
MAX_STEPS = 1_000_000
#: the most memory a recorded trajectory (``trajectory=True``) may take
MAX_TRAJECTORY_BYTES = 4 * 2 ** 30


@dataclass
class SampleResult:
    """What `sample` returns.

    **Attributes:**
    - `x`: the samples, shape ``(B, *event_shape)``.
    - `nfe`: network evaluations actually used (counted by the model, denoising included).
    - `times`: the time grid (float64 on the CPU, decreasing from ``T`` -- or from the first
      entry of an explicit grid -- to ``t_end``; for an adaptive solve, just ``[T, t_end]``).
    - `trajectory`: the states on the grid, shape ``(len(times), B, ...)``, plus the denoised
      sample appended when ``denoise=True`` (``len(times) + 1`` entries), or ``None``
      unless asked for.
    - `x_T`: the starting noise; `solver`: the solver used; `t_end`: the end time.
    """

    x: Tensor
    nfe: int
    times: Tensor
    trajectory: Tensor | None
    x_T: Tensor
    solver: Solver
    t_end: float


def _check_nfe(nfe: Any, denoise: bool) -> None:
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise TypeError(f"nfe must be an integer or None, got {nfe!r}")
    low = 2 if denoise else 1
    if nfe < low:
        raise ValueError(f"nfe={nfe} is too small: at least one solver step"
                         f"{' plus the denoising step' if denoise else ''} is needed "
                         f"(nfe >= {low})")


def _explicit_grid(grid: Tensor, T: float) -> Tensor:
    """An explicit grid of times checked and copied to a float64 CPU tensor: 1-d, floating,
    at least two entries, finite, strictly decreasing, in ``(0, T]``."""
    if not isinstance(grid, Tensor) or not grid.is_floating_point():
        what = f"a tensor of dtype {grid.dtype}" if isinstance(grid, Tensor) else type(grid).__name__
        raise TypeError(f"an explicit grid must be a floating-point tensor of times, got {what}")
    if grid.dim() != 1 or grid.shape[0] < 2:
        raise ValueError(f"an explicit grid must be 1-d with at least 2 times (one step), got shape "
                         f"{tuple(grid.shape)}")
    g = grid.detach().to(device="cpu", dtype=torch.float64).clone()
    if not bool(torch.isfinite(g).all()):
        raise ValueError("an explicit grid contains NaN/Inf")
    if not bool((g[1:] < g[:-1]).all()):
        k = int((g[1:] >= g[:-1]).nonzero()[0, 0])
        raise ValueError(f"an explicit grid must be strictly decreasing; entries {k} and {k + 1} are "
                         f"{float(g[k])!r} and {float(g[k + 1])!r}")
    if float(g[0]) > T or float(g[-1]) <= 0.0:
        raise ValueError(f"an explicit grid's times must lie in (0, T] = (0, {T}], got first "
                         f"{float(g[0])!r} and last {float(g[-1])!r}")
    return g


def _grid_cost(slv: Solver, grid: Tensor, denoise: bool, per_call: int = 1) -> int:
    return per_call * (slv.nfe_for_steps(grid.shape[0] - 1) + int(denoise))


def _steps_for_budget(slv: Solver, nfe: int, extra: int, per_call: int) -> int:
    """The steps whose cost, with a model counting ``per_call`` evaluations per call, is
    exactly ``nfe``: ``per_call * (nfe_for_steps(n) + extra) == nfe``; else `BudgetError`."""
    if per_call == 1:
        return slv.steps_for_nfe(nfe, extra)
    calls, rem = divmod(nfe, per_call)
    n = slv.steps_within(calls, extra)
    if rem or n == 0 or slv.nfe_for_steps(n) + extra != calls:
        near = [per_call * (slv.nfe_for_steps(k) + extra) for k in range(max(1, n - 2), n + 4)]
        lower = [k for k in near if k < nfe][-3:]
        higher = [k for k in near if k > nfe][:3]
        den = " + 1 for the final denoising step" if extra else ""
        raise BudgetError(f"solver {slv.name!r} cannot use exactly nfe={nfe} with a model that "
                          f"counts {per_call} evaluations per call (model.evals_per_call, e.g. "
                          f"classifier-free guidance): it costs {per_call} x ({slv.cost_formula()}"
                          f"{den}); the nearest budgets it can meet are {lower + higher}")
    return slv.steps_for_nfe(calls, extra)


def _solve_kwargs(slv: Solver, method: str, cond: dict[str, Tensor],
                  callback: StepCallback | None, noise: PerSampleNoise | None = None
                  ) -> dict[str, Any]:
    """``cond``/``callback``/``noise`` for the solver's ``method``, passed only when given (so
    a user's solver written without them keeps working unconditionally), else a clear
    `TypeError`; per-sample ``noise`` a deterministic solver does not take is left out (its
    starting noise already came from it), and a stochastic one is a `SeedError`."""
    kw: dict[str, Any] = {}
    if cond:
        kw["cond"] = cond
    if callback is not None:
        kw["callback"] = callback
    if not kw and noise is None:
        return kw
    params = inspect.signature(getattr(slv, method)).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if noise is not None:
        if "noise" in params or takes_all:
            kw["noise"] = noise
        elif slv.stochastic:
            raise SeedError(f"solver {slv.name!r} cannot draw per-sample noise from seed= "
                             f"({type(slv).__name__}.{method} takes no noise= argument; solvers "
                             "that draw through StepContext.noise support it): pass generator= "
                             "instead")
    missing = [k for k in kw if k not in params and not takes_all]
    if missing:
        raise TypeError(f"solver {slv.name!r} ({type(slv).__name__}.{method}) does not take "
                        f"{' or '.join(missing)}; a solver supports conditioning and callbacks "
                        f"by accepting the keyword arguments cond= and callback=")
    return kw


def _seeded(seed: int | None, sample_offset: int | None,
            generator: torch.Generator | None) -> PerSampleNoise | None:
    """The per-sample noise of ``seed=`` (checked against ``generator`` and the offset)."""
    if seed is None:
        if sample_offset is not None:
            raise ValueError("sample_offset numbers the samples of seed=; it needs seed")
        return None
    if generator is not None:
        raise ValueError("give either generator= (one stream for the batch) or seed= "
                         "(per-sample noise), not both")
    return PerSampleNoise(seed, 0 if sample_offset is None else sample_offset)


def sample(model: ScoreModel, shape: tuple[int, ...] | torch.Size | None = None,
           solver: str | Solver = "euler_maruyama", nfe: int | None = 100,
           generator: torch.Generator | None = None, x_T: Tensor | None = None, *,
           t_end: float | None = None, grid: str | TimeGrid | Tensor | None = None,
           denoise: bool = True, cond: Mapping[str, Tensor] | None = None,
           callback: StepCallback | None = None, seed: int | None = None,
           sample_offset: int | None = None,
           trajectory: bool = False, progress: bool = False, **options: Any) -> SampleResult:
    r"""Draw samples by solving the reverse SDE or the probability-flow ODE from ``T`` to
    ``t_end``.

    **Arguments:**
    - ``model``: a `ScoreModel`.
    - ``shape``: ``(B, *event_shape)``; may be omitted when ``x_T`` is given.
    - ``solver``: a name in `SOLVERS` (e.g. ``"euler_maruyama"``, ``"ddim"``) or an instance;
      ``**options`` go to its constructor (e.g. ``eta=0.5``).
    - ``nfe``: the total number of network evaluations, the final denoising step included;
      ``None`` for an adaptive solve (solvers with ``adaptive_capable``: ``pf_ode``,
      ``torchsde``, ``ggf``). A model whose one call counts ``model.evals_per_call = c``
      evaluations (a classifier-free guided model: ``c = 2``) makes ``nfe / c`` calls, so
      ``nfe`` must be ``c`` times a budget the solver can meet (else `BudgetError`).
    - ``generator``: all randomness (prior draw and solver noise), one stream for the batch.
    - ``seed``: instead of ``generator``, an integer in ``[0, 2^63)`` from which sample
      ``i``'s starting noise (draw 0) and solver noise (draws 1, 2, ...) derive as a function
      of ``(seed, i)`` alone ([`PerSampleNoise`][scoresde.rng.PerSampleNoise]): sample ``i``
      gets the same noise at any batch size, on any number of processes, in any order.
      Row ``b`` of the batch is sample ``i = sample_offset + b`` (``sample_offset``, default
      0, only with ``seed``). Every fixed-grid solver supports it, and ``ggf``'s adaptive
      solve with ``noise="resample"``; ``torchsde`` and ``ggf``'s adaptive solve with
      ``noise="brownian"`` draw one Brownian path for the whole batch and refuse it
      (`SeedError`, a `ValueError`). With ``x_T`` given, only the solver noise comes from
      ``seed``. The *solve* is per sample too -- so sample ``i`` is bit for bit the
      same at any batch size -- when the network treats rows independently down to the last
      bit (BLAS kernels may round differently at different batch sizes: then sample ``i``
      agrees to rounding) and the solver has no batch statistic: ``pc`` (its Langevin step
      size uses norms averaged over the batch) and the adaptive solves (one step size and
      error norm for the batch, except ``ggf`` with ``noise="resample"``) depend on the
      batch they run in. [`sample_sharded`][scoresde.evaluation.sharding.sample_sharded]
      runs the same batches on any number of processes, so its samples are bit for bit
      those of one process in every case. Cost: docs/sharded_evaluation.md.
    - ``x_T``: starting noise (its dtype and device are kept); drawn from the prior if None.
    - ``t_end``: end time, default ``model.sde.sample_eps`` (with an explicit grid: its last
      entry; a ``t_end`` that differs from it is a ``ValueError``).
    - ``grid``: a name in `GRIDS` (``"uniform"``, ``"quadratic"``, ``"logsnr"``,
      ``"karras"``, ``"polyexponential"``), a `TimeGrid`, or an explicit 1-d floating tensor of
      strictly decreasing times in ``(0, T]`` (used as float64): its first entry may be below
      ``T`` -- sampling then starts there, from ``x_T`` (drawn from the prior if not given), as
      SDEdit and diffusers' "leading" spacing do; its ``len(grid) - 1`` steps must cost exactly
      ``nfe`` (else `BudgetError`). Default: the solver's `default_grid`: for the
      deterministic solvers the rule measured best for that solver on the model's SDE (a
      `PerSDEGrid`; docs/solvers.md, "Default grid per solver and SDE"), ``"uniform"`` for
      ``euler_maruyama``, ``ancestral`` and ``ggf``.
    - ``denoise``: finish with Tweedie's step $\hat x_0 = (x + \sigma^2 s)/\alpha$ at
      ``t_end`` (one evaluation, counted in ``nfe``).
    - ``cond``: conditioning passed to every network call, the final denoising step
      included: a dict of keyword tensors with batch dimension ``B``, e.g.
      ``{"y": labels}`` for a class-conditional network ``net(x, t, y=labels)``.
    - ``callback``: ``callback(i, t, x) -> x or None``, called after each grid step ``i``
      (``0 <= i < n_steps``, in order) with ``t`` the time reached (a Python float,
      ``times[i + 1]``) and the state ``x``; a returned tensor (same shape, dtype, device)
      replaces the state, and the trajectory records it. Not called after the final
      denoising step. Fixed-grid solvers (and ``pf_ode`` with a fixed ``nfe``) support it;
      an adaptive solve (``nfe=None``) and ``torchsde`` (its own loop) reject it with a
      ``ValueError``. Inpainting ([`scoresde.inpaint`][scoresde.inpaint.inpaint]) uses it.
    - ``trajectory``: also return the states on the grid; ``progress``: show a tqdm bar.

    **Returns:** a `SampleResult`.

    **Raises:** `BudgetError` (a ``ValueError``) if the solver cannot use exactly ``nfe``
    evaluations (the message lists budgets it can meet); `SamplingError` if NaN/Inf appears
    (naming the step and time); ``ValueError``/``TypeError`` for bad arguments.
    """
    check_model(model)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(i, t, x), got {type(callback).__name__}")
    per_call = model.evals_per_call
    if isinstance(per_call, bool) or not isinstance(per_call, int) or per_call < 1:
        raise ValueError(f"model.evals_per_call must be a positive integer, got {per_call!r}")
    noise = _seeded(seed, sample_offset, generator)
    slv = make_solver(solver, **options)
    sde = model.sde
    explicit = _explicit_grid(grid, sde.T) if isinstance(grid, Tensor) else None
    if explicit is not None:
        last = float(explicit[-1])
        # compared in the grid's own dtype, so a float32 grid built from t_end agrees with it
        if t_end is not None and float(torch.tensor(float(t_end), dtype=grid.dtype)) != float(grid[-1]):
            raise ValueError(f"t_end={t_end} disagrees with the explicit grid's last time {last!r}; "
                             "leave t_end=None to use the grid's")
        t_end = last
    t_end = sde.sample_eps if t_end is None else float(t_end)
    if not 0.0 < t_end < sde.T:
        raise ValueError(f"t_end must lie in (0, T) = (0, {sde.T}), got {t_end}")
    if x_T is None:
        if shape is None:
            raise ValueError("give the sample shape (B, *event_shape) or the starting noise x_T")
        shape = tuple(shape)
        if len(shape) < 2 or any((not isinstance(s, int)) or s < 1 for s in shape):
            raise ValueError(f"shape must be (B, *event_shape) of positive integers, got {shape}")
        if noise is None:
            x_T = sde.prior_sample(shape, generator, dtype=torch.get_default_dtype(),
                                   device=model.device)
        else:
            x_T = noise.normal(shape, 0, device=model.device) * sde.prior_std
    else:
        check_batch(x_T, "x_T")
        if x_T.dim() < 2:
            raise ValueError(f"x_T must have shape (B, *event_shape), got {tuple(x_T.shape)}")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"shape {tuple(shape)} does not match x_T's shape {tuple(x_T.shape)}")
        check_finite(x_T, "x_T")
    cond = check_cond(cond, x_T.shape[0])
    start = model.n_evals
    with torch.no_grad():
        if nfe is None:
            if explicit is not None:
                raise ValueError(f"an explicit grid of {explicit.shape[0] - 1} steps needs the "
                                 f"budget it costs, nfe={_grid_cost(slv, explicit, denoise, per_call)} "
                                 f"(nfe=None is an adaptive solve)")
            if not (isinstance(slv, AdaptiveSolver) and slv.adaptive_capable):
                raise ValueError(f"solver {slv.name!r} needs an NFE budget (nfe=None means an "
                                 f"adaptive solve, which only {adaptive_solvers()} support)")
            if trajectory:
                raise ValueError("trajectory=True needs a fixed grid (give nfe)")
            if callback is not None:
                raise ValueError("callback needs a fixed grid (give nfe): an adaptive solve "
                                 "(nfe=None) chooses its steps as it goes")
            x = slv.solve_adaptive(model, x_T, t_end, generator,
                                   **_solve_kwargs(slv, "solve_adaptive", cond, None, noise))
            times = torch.tensor([sde.T, t_end], dtype=torch.float64)
            path = None
        else:
            _check_nfe(nfe, denoise)
            if explicit is not None:
                cost = _grid_cost(slv, explicit, denoise, per_call)
                if cost != nfe:
                    per = f"{per_call} x (" if per_call != 1 else "("
                    raise BudgetError(f"an explicit grid of {explicit.shape[0] - 1} steps costs solver "
                                      f"{slv.name!r} {cost} evaluations ({per}{slv.cost_formula()}"
                                      f"{' + 1 for the final denoising step' if denoise else ''}), "
                                      f"not nfe={nfe}")
                times = explicit
                n_steps = explicit.shape[0] - 1
            else:
                n_steps = _steps_for_budget(slv, nfe, int(denoise), per_call)
                if n_steps > MAX_STEPS:
                    raise ValueError(f"nfe={nfe} means {n_steps} steps of {slv.name!r}; at most "
                                     f"{MAX_STEPS} steps are taken (about 200 MB of per-step "
                                     "coefficients, and hours of sampling): use a smaller budget")
                times = None
            if trajectory:
                need = (n_steps + 2) * x_T.numel() * x_T.element_size()
                if need > MAX_TRAJECTORY_BYTES:
                    raise ValueError(f"trajectory=True would store {n_steps + 2} states of "
                                     f"{tuple(x_T.shape)} ({need / 2 ** 30:.1f} GiB, more than "
                                     f"{MAX_TRAJECTORY_BYTES / 2 ** 30:.0f} GiB); use fewer "
                                     "steps or a smaller batch")
            if times is None:
                times = get_grid(slv.default_grid if grid is None else grid)(sde, n_steps, t_end)
            x, path = slv.solve(model, x_T, times, generator, trajectory=trajectory,
                                progress=progress, **_solve_kwargs(slv, "solve", cond, callback, noise))
        if denoise:
            x = tweedie_denoise(model, x, t_end, **cond)
            if not bool(torch.isfinite(x).all()):
                raise SamplingError(f"the final denoising step at t_end = {t_end:g} produced "
                                    f"NaN/Inf (solver {slv.name!r}, NFE {nfe}); the state "
                                    "before it was finite")
            if path is not None:
                path = torch.cat([path, x[None]])
    used = model.n_evals - start
    if nfe is not None and used != nfe:
        raise RuntimeError(f"internal NFE accounting error: solver {slv.name!r} declared "
                           f"{nfe} evaluations but the model counted {used}")
    return SampleResult(x=x, nfe=used, times=times, trajectory=path, x_T=x_T, solver=slv,
                        t_end=t_end)
