r"""The probability-flow ODE through torchdiffeq (Song et al. 2021, eq. 13):

$$\frac{dx}{dt} = f(t)\,x - \tfrac12 g(t)^2\,s_\theta(x, t),$$

integrated from $T$ to $t_\text{end}$. Fixed-step methods (``euler``, ``midpoint``,
``heun2``, ``heun3``, ``rk4``) run on the shared time grids with exactly
``cost * n`` evaluations (1, 2, 2, 3, 4 per step; order 1, 2, 2, 3, 4); with ``nfe=None``
an adaptive method (``dopri5`` by default, or any adaptive torchdiffeq method) controls
the error with ``rtol``/``atol`` and reports the evaluations it used. The network is never
called outside $[t_\text{end}, T]$ (see `scoresde.integrate`). The vector field is
[`ProbabilityFlow`][scoresde.dynamics.ProbabilityFlow], shared with the likelihood.
"""

from __future__ import annotations

import torch

from ..dynamics import ProbabilityFlow
from ..integrate import ADAPTIVE_METHODS, FIXED_METHOD_COST, odeint_range
from ..models import ScoreModel
from ..validation import check_tolerances
from .base import (
    AdaptiveSolver,
    NonFiniteWatch,
    SamplingError,
    StepCallback,
    apply_callback,
    nan_at_step,
)
from .grids import PerSDEGrid
from .registry import register_solver

Tensor = torch.Tensor

FIXED_ORDER = {"euler": 1.0, "midpoint": 2.0, "heun2": 2.0, "heun3": 3.0, "rk4": 4.0}
#: order of the solution each adaptive method propagates
ADAPTIVE_ORDER = {"dopri5": 5.0, "dopri8": 8.0, "bosh3": 3.0, "fehlberg2": 2.0,
                  "adaptive_heun": 2.0}


@register_solver("pf_ode")
class ProbabilityFlowODE(AdaptiveSolver):
    """The PF-ODE with a torchdiffeq method: fixed grid (``nfe=K``) or adaptive (``nfe=None``)."""

    comparison_specs = ({"method": "rk4"}, {"adaptive": True})
    #: the rule per SDE that measured best at 10-20 evaluations on exact targets
    #: (experiments/default_grids.py, docs/results.md)
    default_grid = PerSDEGrid({"vp": "quadratic", "subvp": "quadratic", "ve": "karras"},
                              fallback="quadratic")

    def __init__(self, method: str | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                 max_num_steps: int | None = None) -> None:
        self.method = method
        self.rtol, self.atol, self.max_num_steps = rtol, atol, max_num_steps
        if method is not None and method not in FIXED_METHOD_COST and method not in ADAPTIVE_METHODS:
            raise ValueError(f"unknown method {method!r}; fixed-grid: {sorted(FIXED_METHOD_COST)}, "
                             f"adaptive: {sorted(ADAPTIVE_METHODS)}")
        check_tolerances(rtol, atol)
        fixed = method if method in FIXED_METHOD_COST else "rk4"
        self.cost_per_step = FIXED_METHOD_COST[fixed]
        self.order = (FIXED_ORDER[fixed] if method in FIXED_METHOD_COST or method is None
                      else ADAPTIVE_ORDER[method])

    def _fixed_method(self) -> str:
        if self.method is None:
            return "rk4"
        if self.method not in FIXED_METHOD_COST:
            raise ValueError(f"method {self.method!r} is adaptive: use nfe=None for an adaptive "
                             f"solve, or a fixed-grid method {sorted(FIXED_METHOD_COST)} for a "
                             "fixed NFE budget")
        return self.method

    def steps_for_nfe(self, nfe: int, extra: int = 0) -> int:
        self._fixed_method()
        return super().steps_for_nfe(nfe, extra)

    def solve(self, model: ScoreModel, x: Tensor, grid: Tensor,
              generator: torch.Generator | None = None, *, trajectory: bool = False,
              progress: bool = False, cond: dict[str, Tensor] | None = None,
              callback: StepCallback | None = None) -> tuple[Tensor, Tensor | None]:
        """The fixed-grid solve; ``cond`` goes to every network call, and ``callback(i, t, x)``
        (see [`FixedGridSolver.solve`][scoresde.samplers.base.FixedGridSolver.solve]) is
        called after each grid interval, which is then integrated one at a time."""
        method = self._fixed_method()
        rhs = ProbabilityFlow(model, **(cond or {}))
        if callback is None:
            path = odeint_range(rhs, x, float(grid[0]), float(grid[-1]), method=method,
                                grid=grid, return_path=True)
        else:
            times, states = grid.tolist(), [x]
            for i in range(grid.shape[0] - 1):
                x = odeint_range(rhs, x, times[i], times[i + 1], method=method,
                                 grid=grid[i:i + 2], return_path=True)[-1]
                x = apply_callback(callback, i, times[i + 1], x)
                states.append(x)
            path = torch.stack(states)
        bad = ~torch.isfinite(path.reshape(path.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            k = int(bad.nonzero()[0, 0]) - 1
            raise nan_at_step(f"'pf_ode' ({method})", k, grid.shape[0] - 1, float(grid[k]),
                              float(grid[k + 1]))
        return path[-1], (path if trajectory else None)

    def solve_adaptive(self, model: ScoreModel, x: Tensor, t_end: float,
                       generator: torch.Generator | None, *,
                       cond: dict[str, Tensor] | None = None) -> Tensor:
        method = self.method or "dopri5"
        if method not in ADAPTIVE_METHODS:
            raise ValueError(f"nfe=None needs an adaptive method {sorted(ADAPTIVE_METHODS)}, "
                             f"got {method!r}")
        rhs, watch = ProbabilityFlow(model, **(cond or {})), NonFiniteWatch()
        where = f"in the adaptive solve from t={model.sde.T} to t={t_end}"
        try:
            out = odeint_range(lambda t, y: watch(t, rhs(t, y)), x, model.sde.T, t_end,
                               method=method, rtol=self.rtol, atol=self.atol,
                               max_num_steps=self.max_num_steps, breakpoints=model.sde.breakpoints)
        except AssertionError as e:
            # torchdiffeq asserts (e.g. "underflow in dt") once NaN/Inf reaches its error control
            if watch.time is None:
                raise
            raise SamplingError(f"solver 'pf_ode' ({method}) produced NaN/Inf {where}: first "
                                f"non-finite evaluation at t = {watch.time:.6g} ({e})") from None
        if not bool(torch.isfinite(out).all()):
            at = f"; first non-finite evaluation at t = {watch.time:.6g}" if watch.time is not None else ""
            raise SamplingError(f"solver 'pf_ode' ({method}) produced NaN/Inf {where}{at}")
        return out
