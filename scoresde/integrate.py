"""torchdiffeq glue, written once: integrate between two times with every evaluation kept
inside the time range, fixed grids through `grid_constructor`, and clear errors.

torchdiffeq's adaptive solvers probe the right-hand side at `t0 + h0` to choose the first
step, and `h0` can overshoot the end time; a score network must never be called outside
`[t_end, T]` (docs/math.md, "Time ranges"), so the right-hand side sees `t` clamped to the range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .validation import check_tolerances

Tensor = torch.Tensor
State = Tensor | tuple[Tensor, ...]

__all__ = ["odeint_range", "ADAPTIVE_METHODS", "FIXED_METHOD_COST"]

#: torchdiffeq's adaptive methods that `odeint_range` accepts
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: network evaluations per step of torchdiffeq's fixed-grid methods
FIXED_METHOD_COST = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}


def odeint_range(func: Callable[[Tensor, State], State], y0: State, t_start: float,
                 t_end: float, *, method: str = "dopri5", rtol: float = 1e-5,
                 atol: float = 1e-5, grid: Tensor | None = None,
                 max_num_steps: int | None = None, options: dict[str, Any] | None = None,
                 return_path: bool = False, breakpoints: Sequence[float] = ()) -> State:
    """Integrate `dy/dt = func(t, y)` from `t_start` to `t_end` (either direction).

    **Arguments:**

    - `method`: any torchdiffeq method; adaptive ones use `rtol`/`atol`.
    - `grid`: for fixed-grid methods, the full time grid from `t_start` to `t_end`
      (monotone, 1-d); one step of the method per grid interval.
    - `max_num_steps`: adaptive step limit; exceeding it raises `RuntimeError` naming
      the time reached.

    **Returns:** the state at `t_end`.
    """
    import torchdiffeq  # imported on first use: `import scoresde` stays light

    if method not in ADAPTIVE_METHODS and method not in FIXED_METHOD_COST:
        raise ValueError(f"unknown torchdiffeq method {method!r}; known: adaptive "
                         f"{list(ADAPTIVE_METHODS)}, fixed-grid {list(FIXED_METHOD_COST)}")
    if method in ADAPTIVE_METHODS:
        check_tolerances(rtol, atol)
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    last: list[Tensor] = []

    def rhs(t: Tensor, y: State) -> State:
        tc = t.clamp(lo, hi)
        if last:
            last[0] = tc
        else:
            last.append(tc)
        return func(tc, y)

    ref = y0[0] if isinstance(y0, tuple) else y0
    tdtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
    ts = torch.tensor([t_start, t_end], dtype=tdtype, device=ref.device)
    opts = dict(options or {})
    if grid is not None:
        g = grid.to(dtype=tdtype, device=ref.device)
        if return_path:
            ts = g
        else:
            opts["grid_constructor"] = lambda *_: g
    elif return_path:
        raise ValueError("return_path needs a fixed grid")
    if max_num_steps is not None:
        opts["max_num_steps"] = int(max_num_steps)
    if method in ADAPTIVE_METHODS and "step_t" not in opts:
        jumps = {float(j) for j in torch.as_tensor(opts.get("jump_t", [])).reshape(-1).tolist()}
        steps = sorted({float(b) for b in breakpoints if lo < float(b) < hi} | {float(t_end)})
        opts["step_t"] = torch.tensor([t for t in steps if t not in jumps], dtype=tdtype,
                                      device=ref.device)
    try:
        out = torchdiffeq.odeint(rhs, y0, ts, rtol=rtol, atol=atol, method=method,
                                 options=opts or None)
    except AssertionError as e:
        if "max_num_steps" in str(e):
            reached = float(last[0]) if last else t_start
            raise RuntimeError(f"the ODE solve from t={t_start:g} to t={t_end:g} exceeded "
                               f"max_num_steps={max_num_steps} and stopped at t={reached:.6g}; "
                               "loosen rtol/atol or raise max_num_steps") from None
        raise
    if return_path:
        return out
    if isinstance(out, tuple):
        return tuple(o[-1] for o in out)
    return out[-1]
