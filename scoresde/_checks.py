"""Input checks and broadcasting helpers shared by the whole package.

Inputs are checked once, at the public entry points, and the checks are cheap: on the
CPU a value check costs nothing; on an accelerator a range check would force a host
synchronisation, so there it is done with `torch._assert_async` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


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


def bcast(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient of shape `()` or `(B,)` to broadcast against
    `x` of shape `(B, *event_shape)`."""
    if c.dim() == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.dim() - 1))


def check_batch(x: Tensor, name: str = "x") -> None:
    """Check that `x` is a floating tensor with a batch dimension."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (B, *event_shape), got a 0-d tensor")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """`value` if it is one of `allowed`, else `ValueError` naming both."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_int(name: str, value: object, minimum: int) -> int:
    """`value` if it is an integer >= `minimum` (bools refused), else `TypeError`/`ValueError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_finite(x: Tensor, what: str) -> None:
    """Raise `ValueError` if `x` holds NaN or Inf (one host sync)."""
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contains {n_bad} NaN/Inf value(s)")
