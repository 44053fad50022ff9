"""torchdiffeq glue, written once: integrate between two times with every evaluation kept
inside the time range, fixed grids through `grid_constructor`, and clear errors.

torchdiffeq's adaptive solvers probe the right-hand side at `t0 + h0` to choose the first
step, and `h0` can overshoot the end time; a score network must never be called outside
`[t_end, T]` (docs/math.md, "Time ranges"), so the right-hand side sees `t` clamped to the range.

A numerical failure inside torchdiffeq surfaces as its bare `AssertionError` ("underflow in
dt": the step size shrank to nothing, because the field exploded or turned NaN) or, when the
very first evaluation is NaN, as a NaN time handed to the right-hand side. `odeint_range`
turns both into a [`SamplingError`][scoresde.samplers.base.SamplingError] naming the time the
solve reached and the first time the right-hand side was NaN/Inf (watched on the device, no
host synchronisation per evaluation); a NaN time is replaced by the start time before the
right-hand side sees it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .validation import check_positive, check_real

Tensor = torch.Tensor
State = Tensor | tuple[Tensor, ...]

__all__ = ["odeint_range", "ADAPTIVE_METHODS", "FIXED_METHOD_COST"]

#: torchdiffeq's adaptive methods that `odeint_range` accepts
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: network evaluations per step of torchdiffeq's fixed-grid methods
FIXED_METHOD_COST = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}


class _Watch:
    """The last time the right-hand side was evaluated at and the first time its output was
    NaN/Inf, both kept on the device (read once, after a failure)."""

    def __init__(self) -> None:
        self.last: Tensor | None = None
        self.bad: Tensor | None = None

    def __call__(self, t: Tensor, out: State) -> State:
        self.last = t
        outs = out if isinstance(out, tuple) else (out,)
        finite = torch.stack([torch.isfinite(o).all() for o in outs]).all()
        t64 = t.detach().to(torch.float64)
        if self.bad is None:
            self.bad = torch.full_like(t64, math.nan)
        self.bad = torch.where(torch.isnan(self.bad) & ~finite, t64, self.bad)
        return out

    def first_bad(self) -> float | None:
        return None if self.bad is None or bool(torch.isnan(self.bad)) else float(self.bad)


def odeint_range(func: Callable[[Tensor, State], State], y0: State, t_start: float,
                 t_end: float, *, method: str = "dopri5", rtol: float = 1e-5,
                 atol: float = 1e-5, grid: Tensor | None = None,
                 max_num_steps: int | None = None, options: dict[str, Any] | None = None,
                 return_path: bool = False, breakpoints: Sequence[float] = (),
                 time_of: Callable[[float], float] | None = None) -> State:
    """Integrate `dy/dt = func(t, y)` from `t_start` to `t_end` (either direction).

    **Arguments:**

    - `method`: any torchdiffeq method; adaptive ones use `rtol`/`atol`.
    - `grid`: for fixed-grid methods, the full time grid from `t_start` to `t_end`
      (monotone, 1-d); one step of the method per grid interval.
    - `max_num_steps`: adaptive step limit; exceeding it raises `RuntimeError` naming
      the time reached.
    - `breakpoints`: times the adaptive steps land on exactly (kinks of the field).
    - `time_of`: for an integration variable other than the SDE's time (e.g. the log-SNR),
      the map from it to `t`, so that error messages name times `t`.

    **Returns:** the state at `t_end`.

    **Raises:** `SamplingError` when the solve fails numerically (NaN/Inf in the field, or
    the step size underflowing), naming the time reached and where the field first was
    NaN/Inf; `RuntimeError` past `max_num_steps`.
    """
    import torchdiffeq  # imported on first use: `import scoresde` stays light

    if method not in ADAPTIVE_METHODS and method not in FIXED_METHOD_COST:
        raise ValueError(f"unknown torchdiffeq method {method!r}; known: adaptive "
                         f"{list(ADAPTIVE_METHODS)}, fixed-grid {list(FIXED_METHOD_COST)}")
    if method in ADAPTIVE_METHODS:  # rtol = 0: a norm that applies its own tolerances
        check_real("rtol", rtol, low=0.0)
        check_positive("atol", atol)
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    watch = _Watch()

    def rhs(t: Tensor, y: State) -> State:
        # a NaN time (a first step chosen from a NaN field) becomes the start time
        tc = torch.nan_to_num(t, nan=t_start).clamp(lo, hi)
        return watch(tc, func(tc, y))

    def name(v: float, sep: str = "=") -> str:
        return f"t{sep}{v if time_of is None else time_of(v):.6g}"

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
    span = f"the {method} solve from {name(t_start)} to {name(t_end)}"
    try:
        out = torchdiffeq.odeint(rhs, y0, ts, rtol=rtol, atol=atol, method=method,
                                 options=opts or None)
    except AssertionError as e:
        reached = float(watch.last) if watch.last is not None else t_start
        if "max_num_steps" in str(e):
            raise RuntimeError(f"{span} exceeded max_num_steps={max_num_steps} and stopped "
                               f"at {name(reached)}; loosen rtol/atol or raise "
                               "max_num_steps") from None
        raise _failure(span, name, reached, watch.first_bad(), str(e)) from None
    if return_path:  # fixed grids: the caller inspects the path and names the step
        return out
    last = tuple(o[-1] for o in out) if isinstance(out, tuple) else (out[-1],)
    if method in ADAPTIVE_METHODS and not all(bool(torch.isfinite(o).all()) for o in last):
        raise _failure(span, name, t_end, watch.first_bad(), "NaN/Inf in the result")
    return last if isinstance(out, tuple) else last[0]


def _failure(span: str, name: Callable[..., str], reached: float, bad: float | None,
             cause: str) -> Exception:
    from .samplers.base import SamplingError  # imported here: the samplers import this module

    if bad is not None:
        what = (f"could not get past {name(bad, ' = ')}: NaN/Inf in the field there (first "
                f"non-finite evaluation at {name(bad, ' = ')})")
    else:
        what = (f"could not get past {name(reached, ' = ')}: the step size underflowed there, "
                "the field grows too fast (an exploding score?)")
    return SamplingError(f"{span} {what}; torchdiffeq: {cause}")
