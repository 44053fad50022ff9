"""The one set of input validators and broadcasting helpers shared by the whole package.

Inputs are checked once, at the public entry points, with one convention everywhere: a
value of the wrong **type** raises `TypeError`, a value of the right type but outside what
is allowed raises `ValueError`; both messages name the argument, what was given and what
is allowed. The checks are cheap: on the CPU a value check costs nothing; on an
accelerator a range check of a tensor would force a host synchronisation, so there it is
done with `torch._assert_async` instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

Tensor = torch.Tensor

__all__ = ["as_time", "bcast", "check_batch", "check_choice", "check_int", "check_real",
           "check_positive", "check_even_int", "check_finite", "check_tolerances",
           "check_generator", "check_data", "check_time_in", "check_instance", "check_cond"]


def as_time(t: float | Tensor, batch: int | None, ref: Tensor | None = None, *,
            T: float = 1.0, name: str = "t") -> Tensor:
    """Return `t` as a tensor of shape `()` or `(B,)`, checked to lie in `[0, T]`.

    **Arguments:**

    - `t`: a Python number, a 0-d tensor or a tensor of shape `(B,)`.
    - `batch`: the batch size `B` that a 1-d `t` must have (`None`: any).
    - `ref`: a tensor whose dtype and device `t` is converted to (floating dtypes only).

    **Raises:** `TypeError` for a non-numeric `t`; `ValueError` for a wrong shape, a
    non-finite value or a value outside `[0, T]`.
    """
    if isinstance(t, bool) or not isinstance(t, (int, float, Tensor)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(t).__name__}")
    if not isinstance(t, Tensor):
        if not (0.0 <= float(t) <= T):
            raise ValueError(f"{name}={t} is outside the time range [0, T] = [0, {T}]")
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        device = ref.device if ref is not None else None
        return torch.tensor(float(t), dtype=dtype, device=device)
    if t.dim() > 1:
        raise ValueError(f"{name} must be a scalar or have shape (B,), got shape {tuple(t.shape)}")
    if t.dim() == 1 and batch is not None and t.shape[0] != batch:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)} but the data batch has B={batch}; "
            "pass a scalar or a tensor of shape (B,)")
    if ref is not None and (t.dtype != ref.dtype or t.device != ref.device):
        t = t.to(dtype=ref.dtype if ref.is_floating_point() else t.dtype, device=ref.device)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.device.type == "cpu":
        bad = ~((t >= 0) & (t <= T))
        if bool(bad.any()):
            v = t[bad].flatten()[0].item()
            raise ValueError(f"{name} contains {v}, outside the time range [0, T] = [0, {T}]")
    else:
        torch._assert_async(((t >= 0) & (t <= T)).all(), f"{name} outside [0, {T}]")
    return t


def bcast(c: Tensor | float, x: Tensor) -> Tensor | float:
    """Reshape a per-sample coefficient of shape `()` or `(B,)` to broadcast against
    `x` of shape `(B, *event_shape)` (a Python float is returned as is)."""
    if not isinstance(c, Tensor) or c.dim() == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.dim() - 1))


def check_batch(x: object, name: str = "x") -> None:
    """Check that `x` is a floating tensor with a batch dimension."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (B, *event_shape), got a 0-d tensor")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_data(x: object, name: str = "x") -> Tensor:
    """`x` as a finite floating tensor of shape `(B, *event_shape)`, `B >= 1`, with at least
    one event dimension; detached (for evaluation-only entry points)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, *event_shape), "
                        f"got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32 or float64), "
                        f"got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name} must have shape (B, *event_shape) with B >= 1 and at least "
                         f"one event dimension (use (B, 1) for scalars), got {tuple(x.shape)}")
    check_finite(x, name)
    return x.detach()


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """`value` if it is one of the strings `allowed`: `TypeError` for a non-string,
    `ValueError` for another string, both naming what is allowed."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {tuple(allowed)}, got {type(value).__name__} "
                        f"{value!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_int(name: str, value: object, minimum: int) -> int:
    """`value` as an `int` if it is an integer >= `minimum` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_even_int(name: str, value: object, why: str = "") -> int:
    """`value` as an `int` if it is a positive even integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive even integer{why}, got "
                        f"{type(value).__name__} {value!r}")
    if value <= 0 or value % 2:
        raise ValueError(f"{name} must be a positive even integer{why}, got {value}")
    return int(value)


def check_real(name: str, value: object, *, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a finite `float` in the interval from `low` to `high` (closed ends unless
    `low_open`/`high_open`); bools and non-numbers are a `TypeError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    lo_ok = v > low if low_open else v >= low
    hi_ok = v < high if high_open else v <= high
    if not (math.isfinite(v) and lo_ok and hi_ok):
        raise ValueError(f"{name} must be {_describe(low, high, low_open, high_open)}, "
                         f"got {value!r}")
    return v


def _describe(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if math.isinf(low) and math.isinf(high):
        return "a finite number"
    if math.isinf(high):
        if low == 0:
            return "a finite positive number" if low_open else "a finite number >= 0"
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if math.isinf(low):
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_positive(name: str, value: object) -> float:
    """`value` as a finite `float` > 0."""
    return check_real(name, value, low=0.0, low_open=True)


def check_tolerances(rtol: object, atol: object) -> None:
    """ODE/SDE tolerances: finite numbers > 0."""
    check_positive("rtol", rtol)
    check_positive("atol", atol)


def check_finite(x: Tensor, what: str) -> None:
    """Raise `ValueError` if `x` holds NaN or Inf (one host sync)."""
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contains {n_bad} NaN/Inf value(s)")


def check_generator(generator: object, name: str = "generator") -> None:
    """`None` or a `torch.Generator`."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")


def check_time_in(name: str, value: object, T: float) -> float:
    """A start/end time in `[0, T)` as a float."""
    return check_real(name, value, low=0.0, high=T, high_open=True)


def check_instance(name: str, value: Any, cls: type | tuple[type, ...], what: str) -> Any:
    """`value` if it is an instance of `cls`, else `TypeError` saying `what` is expected."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value


def check_cond(cond: object, batch: int, name: str = "cond") -> dict[str, Tensor]:
    """Conditioning for a network call `net(x, t, **cond)`: `None` (returned as `{}`) or a
    dict of tensors keyed by keyword names (not `"x"` or `"t"`), each with first (batch)
    dimension `batch`. Returns a new dict; `TypeError`/`ValueError` name the offending key."""
    if cond is None:
        return {}
    if not isinstance(cond, Mapping):
        raise TypeError(f"{name} must be a dict of conditioning tensors with batch dimension "
                        f"{batch} (e.g. {{'y': labels}}) or None, got {type(cond).__name__}")
    for key, value in cond.items():
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be strings (keyword arguments of the network), "
                            f"got {type(key).__name__} {key!r}")
        if key in ("x", "t"):
            raise ValueError(f"{name} cannot have the key {key!r}: the network is called as "
                             "net(x, t, **cond)")
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}[{key!r}] must be a tensor, got {type(value).__name__}")
        if value.dim() == 0 or value.shape[0] != batch:
            raise ValueError(f"{name}[{key!r}] has shape {tuple(value.shape)}; its first (batch) "
                             f"dimension must be {batch}, the batch size B={batch} of x")
    return dict(cond)
