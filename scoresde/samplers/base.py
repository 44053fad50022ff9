r"""Solver interface: fixed-grid solvers implement `step`, adaptive ones implement `solve`.

A solver declares

- `order`: its convergence order: the ODE solution's order for deterministic solvers, the
  weak order for stochastic ones (`TorchSDE` declares its strong order, a lower bound, and
  `strong_order`);
- `stochastic`: whether it injects noise;
- its cost: `nfe_for_steps(n)`, the number of network evaluations for ``n`` steps
  (``cost_per_step * n`` unless the solver says otherwise, e.g. Heun's ``2n - 1``), and
  `cost_formula()`, the same in words for messages and tables;
- `adaptive_capable` (it can run with ``nfe=None``) and `default_grid` (a name in `GRIDS`
  or a `TimeGrid`, e.g. a `PerSDEGrid`).

The registry (`SOLVERS`) holds the classes, so the comparison, the CLI and the docs read these
declarations from it instead of keeping lists of solver names.

The common loop lives once, in `FixedGridSolver.solve`: it walks the grid, records the
trajectory if asked, and detects NaN/Inf without a host synchronisation per step (the first
bad step is tracked on the device and checked once at the end).

Manual stepping (a notebook can drive any fixed-grid solver itself):

```python
solver = sd.SOLVERS["ddim"](eta=0.0)
grid = sd.samplers.UniformGrid()(model.sde, 49, 1e-3)
with torch.no_grad():
    ctx = solver.start(model, x_T, grid, generator=g)
    x = x_T
    for i in range(len(grid) - 1):
        x = solver.step(ctx, x, i)
    x0 = sd.dynamics.tweedie_denoise(model, x, 1e-3)   # = sd.sample(..., nfe=50, grid="uniform").x
```
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from tqdm import tqdm

from ..models import ScoreModel
from ..rng import PerSampleNoise

if TYPE_CHECKING:
    from .grids import TimeGrid

Tensor = torch.Tensor

__all__ = ["Solver", "FixedGridSolver", "AdaptiveSolver", "StepContext", "SamplingError",
           "BudgetError", "SeedError", "StepCallback", "apply_callback"]

#: ``callback(i, t, x) -> x or None``, called after each grid step (`apply_callback`)
StepCallback = Callable[[int, float, Tensor], "Tensor | None"]


def apply_callback(callback: StepCallback, i: int, t: float, x: Tensor) -> Tensor:
    """Call ``callback(i, t, x)`` after grid step ``i`` (``t`` the time reached) and return
    the state to continue from: the callback's tensor if it returned one, else ``x``.

    **Raises:** `TypeError` if it returns something other than a tensor or ``None``;
    `ValueError` if the tensor's shape, dtype or device differs from ``x``'s.
    """
    out = callback(i, t, x)
    if out is None:
        return x
    if not isinstance(out, Tensor):
        raise TypeError(f"a sampling callback must return a tensor or None, got "
                        f"{type(out).__name__} (step {i}, t = {t:.6g})")
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"a sampling callback returned a {tuple(out.shape)} {out.dtype} tensor "
                         f"on {out.device} for the state {tuple(x.shape)} {x.dtype} on {x.device} "
                         f"(step {i}, t = {t:.6g}); return a tensor like x, or None")
    return out


class SamplingError(RuntimeError):
    """NaN or Inf appeared while sampling; the message names the solver, step and time."""


def nan_at_step(label: str, k: int, n: int, t_from: float, t_to: float) -> SamplingError:
    """The one wording of a NaN/Inf error on a time grid, naming the step and its times."""
    return SamplingError(f"solver {label} produced NaN/Inf at step {k} of {n} "
                         f"(t = {t_from:.6g} -> {t_to:.6g})")


class BudgetError(ValueError):
    """An NFE budget a solver cannot meet exactly; the message lists the budgets it can meet."""


class SeedError(ValueError):
    """A solver cannot draw per-sample noise (``sample(..., seed=)``): it draws one noise
    path for the whole batch (``torchsde``, ``ggf``'s adaptive ``"brownian"`` solve) or takes
    no ``noise=``; the message says which and what to use instead."""


@dataclass
class StepContext:
    r"""Everything a step needs, computed once per solve.

    **Attributes:** `model`; `grid` (the times, float64 on the CPU, shape ``(n+1,)``);
    `generator`; `t`, the grid on ``x``'s device and dtype (what the network is fed); the
    per-grid-point coefficients as Python floats computed in float64 on the host (so step
    arithmetic on them launches no device kernels): `alpha`, `sigma`, `f` ($f(t)$), `g2`
    ($g(t)^2$), `lam` ($\lambda(t)$), each a list of length ``n+1``; `state`, a dict the
    solver may use for its own history (multistep methods); and `cond`, the conditioning
    keyword tensors (batch dimension ``B``) passed to every network call (empty: none).
    A solver that calls ``ctx.model.evaluate`` itself passes ``**ctx.cond``.
    `noise_source`: a [`PerSampleNoise`][scoresde.rng.PerSampleNoise] when sampling with
    ``seed=`` (then `noise` ignores the generator and returns its draws 1, 2, ... in order;
    draw 0 is the starting noise), else ``None``; `draws` counts the draws taken.
    A solver draws all its noise through `noise`, so both paths work.
    """

    model: ScoreModel
    grid: Tensor
    generator: torch.Generator | None
    t: Tensor
    alpha: list[float]
    sigma: list[float]
    f: list[float]
    g2: list[float]
    lam: list[float]
    state: dict[str, Any] = field(default_factory=dict)
    cond: dict[str, Tensor] = field(default_factory=dict)
    noise_source: PerSampleNoise | None = None
    draws: int = 0

    @property
    def sde(self):
        return self.model.sde

    @property
    def n_steps(self) -> int:
        return self.grid.shape[0] - 1

    def eps(self, x: Tensor, i: int) -> Tensor:
        r"""$\hat\varepsilon(x, t_i)$: one network evaluation at grid point ``i``."""
        return self.model.evaluate(x, self.t[i], self.alpha[i], self.sigma[i], **self.cond)

    def score(self, x: Tensor, i: int) -> Tensor:
        r"""$s(x, t_i) = -\hat\varepsilon/\sigma_i$: one network evaluation."""
        return -self.eps(x, i) / self.sigma[i]

    def noise(self, x: Tensor) -> Tensor:
        """Standard normal noise like ``x``: drawn from the context's generator, or with
        ``noise_source`` its next draw, row ``b`` a function of (seed, sample index, draw)."""
        if self.noise_source is None:
            return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        self.draws += 1
        return self.noise_source.normal(x.shape, self.draws, dtype=x.dtype, device=x.device)


class Solver(ABC):
    """Base class of every sampler. Subclasses set `name`, `order`, `stochastic`."""

    name: ClassVar[str] = ""
    order: ClassVar[float] = 1.0
    stochastic: ClassVar[bool] = False
    cost_per_step: ClassVar[int] = 1
    #: solvers that can run without an NFE budget (adaptive step size)
    adaptive_capable: ClassVar[bool] = False
    #: the time grid `sample` uses when the caller names none (a name in `GRIDS`)
    default_grid: ClassVar[str | TimeGrid] = "uniform"
    #: option sets the comparison runs by default (`scoresde.evaluation.specs.default_solvers`);
    #: each a dict of constructor options, plus ``"grid"`` or ``"adaptive": True``
    comparison_specs: ClassVar[tuple[dict[str, Any], ...]] = ()

    def nfe_for_steps(self, n_steps: int) -> int:
        """Network evaluations used by ``n_steps`` steps (the denoising step excluded)."""
        return self.cost_per_step * n_steps

    def steps_within(self, nfe: int, extra: int = 0) -> int:
        """The largest number of steps whose cost plus ``extra`` is at most ``nfe`` (0 if
        not even one step fits). `nfe_for_steps` must be increasing; the search is
        O(log nfe), so a huge budget costs nothing to check."""
        if self.nfe_for_steps(1) + extra > nfe:
            return 0
        lo, hi = 1, 2
        while self.nfe_for_steps(hi) + extra <= nfe:      # invariant: lo fits
            lo, hi = hi, 2 * hi
        while hi - lo > 1:                                  # lo fits, hi does not
            mid = (lo + hi) // 2
            if self.nfe_for_steps(mid) + extra <= nfe:
                lo = mid
            else:
                hi = mid
        return lo

    def steps_for_nfe(self, nfe: int, extra: int = 0) -> int:
        """The number of steps whose cost plus ``extra`` (the denoising step) is exactly
        ``nfe``; otherwise `BudgetError` listing the nearest budgets that can be met."""
        n = self.steps_within(nfe, extra)
        if n == 0 or self.nfe_for_steps(n) + extra != nfe:
            raise BudgetError(self.budget_message(nfe, extra))
        return n

    def reachable(self, upto: int, extra: int = 0) -> list[int]:
        """Total budgets (steps plus ``extra``) reachable up to ``upto``."""
        return [self.nfe_for_steps(n) + extra for n in range(1, self.steps_within(upto, extra) + 1)]

    def budget_message(self, nfe: int, extra: int = 0) -> str:
        """Why ``nfe`` (plus ``extra``) cannot be met, with the nearest budgets that can."""
        n = self.steps_within(nfe, extra)
        near = [self.nfe_for_steps(k) + extra for k in range(max(1, n - 2), n + 4)]
        lower = [k for k in near if k < nfe][-3:]
        higher = [k for k in near if k > nfe][:3]
        den = " + 1 for the final denoising step" if extra else ""
        return (f"solver {self.name!r} cannot use exactly nfe={nfe}: it costs "
                f"{self.cost_formula()}{den}; the nearest budgets it can meet are "
                f"{lower + higher}")

    def cost_formula(self) -> str:
        """The cost in words, e.g. ``"2n - 1 evaluations for n steps"``."""
        return f"{self.cost_per_step}n evaluations for n steps"

    @abstractmethod
    def solve(self, model: ScoreModel, x: Tensor, grid: Tensor,
              generator: torch.Generator | None = None, *, trajectory: bool = False,
              progress: bool = False) -> tuple[Tensor, Tensor | None]:
        """Integrate from ``grid[0] = T`` to ``grid[-1]`` on the given grid.
        **Returns:** ``(x_end, trajectory or None)``.

        The built-in solvers also take the keyword arguments ``cond`` (a dict of conditioning
        tensors passed to every network call) and ``callback`` (see
        [`FixedGridSolver.solve`][scoresde.samplers.base.FixedGridSolver.solve]);
        [`sample`][scoresde.samplers.sampling.sample] passes them only when given, so a
        solver written without them keeps working for unconditional sampling. Likewise
        ``noise`` (a [`PerSampleNoise`][scoresde.rng.PerSampleNoise], for ``sample(...,
        seed=)``): a solver that takes it draws sample ``i``'s noise from it alone."""

    @classmethod
    def options(cls) -> list[str]:
        """Names of the keyword options the solver accepts."""
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self"
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def __repr__(self) -> str:
        opts = {k: getattr(self, k) for k in self.options() if hasattr(self, k)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in opts.items())})"


class FixedGridSolver(Solver):
    """A solver defined by one step on a time grid; the loop lives in `solve`."""

    comparison_specs: ClassVar[tuple[dict[str, Any], ...]] = ({},)

    def start(self, model: ScoreModel, x: Tensor, grid: Tensor,
              generator: torch.Generator | None = None, *,
              cond: dict[str, Tensor] | None = None,
              noise: PerSampleNoise | None = None) -> StepContext:
        """Precompute the per-grid coefficients and let the solver initialise its state;
        ``cond`` (conditioning tensors, e.g. ``{"y": labels}``) goes to every network call;
        ``noise``: per-sample noise (`StepContext.noise_source`) instead of the generator."""
        sde = model.sde
        t = grid.to(dtype=x.dtype, device=x.device)
        g64 = grid.to(device="cpu", dtype=torch.float64)
        alpha, sigma, f, g2, lam = (c.tolist() for c in (*sde.coefficients(g64), sde.log_snr(g64)))
        ctx = StepContext(model, grid, generator, t, alpha, sigma, f, g2, lam,
                          cond=dict(cond) if cond else {}, noise_source=noise)
        self.init(ctx, x)
        return ctx

    def init(self, ctx: StepContext, x: Tensor) -> None:  # noqa: B027 - optional hook
        """Optional hook: set up ``ctx.state`` before the first step."""

    @abstractmethod
    def step(self, ctx: StepContext, x: Tensor, i: int) -> Tensor:
        """Advance ``x`` from ``ctx.grid[i]`` to ``ctx.grid[i + 1]``."""

    def solve(self, model: ScoreModel, x: Tensor, grid: Tensor,
              generator: torch.Generator | None = None, *, trajectory: bool = False,
              progress: bool = False, cond: dict[str, Tensor] | None = None,
              callback: StepCallback | None = None, noise: PerSampleNoise | None = None
              ) -> tuple[Tensor, Tensor | None]:
        """Run every step of the grid. **Returns:** ``(x_end, trajectory or None)``;
        the trajectory has shape ``(n_steps + 1, *x.shape)``.

        ``cond``: conditioning tensors passed to every network call. ``callback(i, t, x)``:
        called after step ``i`` (``0 <= i < n_steps``) with ``t = grid[i + 1]`` (a Python
        float, the time reached) and the state ``x``; a returned tensor (same shape, dtype
        and device) replaces the state, ``None`` keeps it (`apply_callback`). Multistep
        solvers keep their history of network outputs, so a replaced state enters their
        next step as it is.

        **Raises:** `SamplingError` naming the first step that produced NaN/Inf.
        """
        ctx = self.start(model, x, grid, generator, cond=cond, noise=noise)
        n = ctx.n_steps
        times = grid.tolist() if callback is not None else None
        path = [x] if trajectory else None
        finite = []  # one 0-d flag per step, reduced once at the end: no host sync in the loop
        for i in tqdm(range(n), disable=not progress, desc=self.name, leave=False):
            x = self.step(ctx, x, i)
            if callback is not None:
                x = apply_callback(callback, i, times[i + 1], x)
            finite.append(torch.isfinite(x).all())
            if path is not None:
                path.append(x)
        ok = torch.stack(finite)
        if not bool(ok.all()):
            k = int((~ok).nonzero()[0, 0])
            raise nan_at_step(repr(self.name), k, n, float(grid[k]), float(grid[k + 1]))
        return x, (torch.stack(path) if path is not None else None)


class AdaptiveSolver(Solver):
    """A solver that owns its loop (torchdiffeq, torchsde): `solve` on a fixed grid, and,
    with ``nfe=None``, `solve_adaptive`, which adapts its step size to its tolerances; the
    evaluations it used are counted and reported."""

    adaptive_capable = True

    @abstractmethod
    def solve_adaptive(self, model: ScoreModel, x: Tensor, t_end: float,
                       generator: torch.Generator | None) -> Tensor:
        """Integrate from ``T`` to ``t_end`` with adaptive steps. The built-in solvers also
        take ``cond=`` (conditioning tensors for every network call); an adaptive solve
        takes no ``callback`` (its steps are not known in advance)."""


class NonFiniteWatch:
    """Remembers the first watched evaluation that was NaN/Inf (its time and its index among
    the evaluations), without a host synchronisation per evaluation: read `time` and `index`
    once, after the solve. Adaptive solvers that own their loop (torchdiffeq, torchsde) use
    it to name the step and time in a `SamplingError`."""

    def __init__(self) -> None:
        self._t: Tensor | None = None
        self._i: Tensor | None = None
        self.count = 0

    def __call__(self, t: Tensor | float, out: Tensor) -> Tensor:
        """Record ``t`` if ``out`` is the first non-finite evaluation; returns ``out``."""
        if self._t is None:
            self._t = torch.full((), math.nan, dtype=torch.float64, device=out.device)
            self._i = torch.full((), -1, dtype=torch.long, device=out.device)
        t = torch.as_tensor(t, device=out.device).to(torch.float64).reshape(-1)[0]
        first = ~torch.isfinite(out).all() & (self._i < 0)
        self._t = torch.where(first, t, self._t)
        self._i = torch.where(first, self.count, self._i)
        self.count += 1
        return out

    @property
    def time(self) -> float | None:
        """The time of the first non-finite evaluation, or None."""
        return None if self._i is None or int(self._i) < 0 else float(self._t)

    @property
    def index(self) -> int | None:
        """The index (from 0) of the first non-finite evaluation, or None."""
        return None if self._i is None or int(self._i) < 0 else int(self._i)
