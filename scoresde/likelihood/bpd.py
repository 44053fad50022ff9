r"""Bits per dimension of continuous and discrete data, and uniform dequantization
(Theis, van den Oord & Bethge 2016): [`bits_per_dim`][scoresde.likelihood.bpd.bits_per_dim]
derives the offsets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models import ScoreModel, check_model
from ..validation import check_choice, check_generator, check_int
from .ode import log_likelihood

Tensor = torch.Tensor

__all__ = ["BPDResult", "bits_per_dim", "uniform_dequantize", "dequantized_bits_per_dim",
           "SCALINGS"]

#: data scalings understood by `bits_per_dim`
SCALINGS = ("continuous", "[0,1]", "[-1,1]")


@dataclass
class BPDResult:
    r"""What `dequantized_bits_per_dim` returns (per sample, shape `(B,)`).

    - `bpd`: bits per dimension of the discrete data, averaged over dequantization draws.
    - `stderr`: standard error of `bpd` across draws (`None` when `n_draws = 1`).
    - `logp`: the model-space log-density $\log p_Y(y)$, averaged over draws (nats).
    - `nfe`: network evaluations of all the solves.
    """

    bpd: Tensor
    stderr: Tensor | None
    logp: Tensor
    nfe: int


def _levels(n_bits: object, levels: object) -> int:
    """The number of discrete levels from `n_bits` or `levels` (default 256 = 8 bits)."""
    if levels is None:
        return 2 ** check_int("n_bits", 8 if n_bits is None else n_bits, 1)
    levels = check_int("levels", levels, 2)
    if n_bits is not None and 2 ** check_int("n_bits", n_bits, 1) != levels:
        raise ValueError(f"n_bits={n_bits} and levels={levels} disagree (levels = 2**n_bits); "
                         "give one of them")
    return levels


def _scale_offset(scaling: str, levels: int) -> tuple[float, float, float]:
    """`(a, b, offset_bits)` with model-space `y = a (k + u) + b` and `-log2 a`."""
    if scaling == "[0,1]":
        return 1.0 / levels, 0.0, math.log2(levels)
    if scaling == "[-1,1]":
        return 2.0 / levels, -1.0, math.log2(levels) - 1.0
    return 1.0, 0.0, 0.0


def bits_per_dim(logp: Tensor, x_shape: Sequence[int] | torch.Size, *, scaling: str = "continuous",
                 n_bits: int | None = None, levels: int | None = None) -> Tensor:
    r"""Convert per-sample log-densities (nats) into bits per dimension.

    $\mathrm{bpd} = -\dfrac{\log p_Y(y)}{D\ln 2} + \text{offset}$ with
    $D = \prod$ `x_shape[1:]`, where $\log p_Y(y)$ is the log-density the
    model assigns to the data **as it sees them** (`logp`, e.g. from
    `log_likelihood`) and the offset accounts for the data scaling. With $L$ = `levels`
    discrete values per dimension ($L = 2^n$ for `n_bits` $= n$; default 256):

    - `"continuous"`: the data are continuous and `y` is the data itself; offset 0.
    - `"[0,1]"`: integers $k \in \{0,\dots,L-1\}^D$ dequantized as
      $y = (k + u)/L \in [0, 1)$, $u \sim U[0,1)^D$; offset $\log_2 L$ (8 bits for 8-bit
      data; $\log_2 17 \approx 4.09$ for the 17 grey levels of scikit-learn's digits).
    - `"[-1,1]"`: $y = 2(k + u)/L - 1 \in [-1, 1)$; offset $\log_2(L/2)$ (7 bits).

    **Derivation.** Write $w = k + u \in [0, L)^D$ (one unit-width bin per value)
    and $y = a w + b$. A density $p_Y$ on the model's space is the density
    $q_W(w) = a^D p_Y(aw + b)$ on $w$ (the Jacobian $|dy/dw| = a$ per
    dimension). The discrete model is $P(k) = \int_{[0,1)^D} q_W(k + u)\,du$, and by
    Jensen (Theis, van den Oord & Bethge 2016; Ho et al. 2019, Flow++)
    $\log P(k) \ge \mathbb E_u \log q_W(k+u) = \mathbb E_u\log p_Y(y) + D\log a$. So

    $$
    \mathrm{bpd} = -\frac{\log_2 P(k)}{D}
    \le -\frac{\mathbb E_u \log p_Y(y)}{D\ln 2} - \log_2 a,
    $$

    with $a = 1/L$ for `[0,1]` (offset $-\log_2 a = \log_2 L$) and
    $a = 2/L$ for `[-1,1]` (offset $\log_2(L/2)$). The two agree: the same
    data mapped to `[-1,1]` have $\log p_{Y'}(y') = \log p_Y(y) - D\log 2$, i.e.
    one bit per dimension more on the first term and one less in the offset. Pass one
    `logp` per dequantization draw and average the returned bpd over draws
    (`dequantized_bits_per_dim` does it). If the model sees a further transform of $y$
    (a logit, a standardisation), pass `log_likelihood` that transform's `logdet` so that
    `logp` is $\log p_Y(y)$.

    **Arguments:** `logp` of shape `(B,)`; `x_shape` the full data shape
    `(B, *event_shape)` (`x.shape`); `scaling` one of `SCALINGS`; `n_bits` or `levels`
    (integer $\ge 2$; `levels = 2**n_bits`): the discrete data's bit depth or number of
    values per dimension (ignored for `"continuous"`).

    **Returns:** bits per dimension, shape `(B,)`.
    """
    if not isinstance(logp, Tensor) or not logp.is_floating_point():
        what = f"dtype {logp.dtype}" if isinstance(logp, Tensor) else type(logp).__name__
        raise TypeError(f"logp must be a floating-point torch.Tensor of shape (B,), got {what}")
    if logp.dim() != 1:
        raise ValueError(f"logp must have shape (B,), got {tuple(logp.shape)}")
    shape = tuple(x_shape)
    if (len(shape) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)):
        raise ValueError(f"x_shape must be the data's full shape (B, *event_shape) of positive "
                         f"integers, got {x_shape!r}")
    if shape[0] != logp.shape[0]:
        raise ValueError(f"x_shape[0] = {shape[0]} must equal the number of log-densities "
                         f"{logp.shape[0]} (x_shape is the full shape (B, *event_shape))")
    check_choice("scaling", scaling, SCALINGS)
    levels = _levels(n_bits, levels)
    d = math.prod(shape[1:])
    _, _, offset = _scale_offset(scaling, levels)
    return -logp / (d * math.log(2.0)) + offset


def uniform_dequantize(k: Tensor, *, scaling: str = "[0,1]", n_bits: int | None = None,
                       levels: int | None = None, generator: torch.Generator | None = None,
                       dtype: torch.dtype | None = None) -> Tensor:
    r"""Uniform dequantization of discrete data with $L$ = `levels` values per dimension
    ($L = 2^n$ for `n_bits` $= n$; default 256), Theis et al. 2016.

    $y = (k + u)/L$ (`"[0,1]"`) or $y = 2(k + u)/L - 1$ (`"[-1,1]"`),
    $u \sim U[0,1)$ independently per entry, drawn from `generator`.

    **Arguments:** `k` integers in $[0, L - 1]$ (an integer tensor, or a floating one
    holding integers), any shape; `dtype` of the result: by default `k`'s dtype when `k` is
    floating, else `torch.get_default_dtype()`. **Returns:** `y`, shape of `k`.
    """
    if not isinstance(k, Tensor):
        raise TypeError(f"k must be a torch.Tensor of integers, got {type(k).__name__}")
    if scaling not in ("[0,1]", "[-1,1]"):
        raise ValueError(f"scaling must be one of ('[0,1]', '[-1,1]'), got {scaling!r}")
    levels = _levels(n_bits, levels)
    check_generator(generator)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    top = levels - 1
    if k.is_complex() or k.dtype == torch.bool:
        raise TypeError(f"k must hold integers, got dtype {k.dtype}")
    if k.is_floating_point() and not bool((k == torch.round(k)).all()):
        raise ValueError("k must hold integer values (the discrete data, not already scaled)")
    if k.numel() and not bool(((k >= 0) & (k <= top)).all()):
        raise ValueError(f"k must lie in [0, {top}] for levels={levels}, got values in "
                         f"[{k.min().item()}, {k.max().item()}]")
    if dtype is None:
        dtype = k.dtype if k.is_floating_point() else torch.get_default_dtype()
    u = torch.rand(k.shape, generator=generator, dtype=dtype, device=k.device)
    a, b, _ = _scale_offset(scaling, levels)
    return a * (k.to(dtype) + u) + b


def _model_dtype(model: ScoreModel) -> torch.dtype | None:
    """The dtype of the model's floating parameters or buffers (None if it has none)."""
    for p in list(model.net.parameters()) + list(model.net.buffers()):
        if p.is_floating_point():
            return p.dtype
    return None


def dequantized_bits_per_dim(model: ScoreModel, k: Tensor, *, n_draws: int = 1,
                             scaling: str = "[0,1]", n_bits: int | None = None,
                             levels: int | None = None, generator: torch.Generator | None = None,
                             dtype: torch.dtype | None = None, **likelihood_kwargs: Any) -> BPDResult:
    r"""Bits per dimension of discrete data: `n_draws` uniform dequantizations per sample
    (`uniform_dequantize`), a probability-flow likelihood for each
    (`log_likelihood`, all draws in one call), `bits_per_dim` with the
    scaling's offset, averaged over draws — an estimate of the Jensen upper bound
    $-\mathbb E_u\log_2 q_W(k+u)/D \ge -\log_2 P(k)/D$.

    **Arguments:** `k` integers of shape `(B, *event_shape)`; `n_bits` or `levels` as in
    `bits_per_dim`; `generator` draws the dequantization noise and then the Hutchinson
    probes; `dtype` of the dequantized data and of the solve (default: the dtype of the
    model's parameters, for a model without any as in `uniform_dequantize`; a `dtype` other
    than the parameters' is a `TypeError`); `likelihood_kwargs` go to `log_likelihood`
    (`divergence`, `rtol`, `variable`, `batch_size`, ...; a `logdet` tensor of shape `(B,)`
    is repeated over the draws).

    **Returns:** a `BPDResult` (per sample `bpd`, its `stderr` across draws,
    the averaged model-space `logp`, `nfe`).
    """
    if not isinstance(k, Tensor) or k.dim() < 2 or k.shape[0] == 0:
        raise ValueError(f"k must be a tensor of shape (B, *event_shape), got "
                         f"{tuple(k.shape) if isinstance(k, Tensor) else type(k).__name__}")
    n_draws = check_int("n_draws", n_draws, 1)
    check_model(model)
    own = _model_dtype(model)
    if dtype is not None and own is not None and dtype != own:
        raise TypeError(f"dtype={dtype} differs from the model's parameters ({own}); convert the "
                        f"model (model.to({dtype})) or leave dtype unset")
    dtype = dtype or own
    b = k.shape[0]
    reps = k.unsqueeze(0).expand((n_draws,) + tuple(k.shape)).reshape((n_draws * b,) + tuple(k.shape[1:]))
    y = uniform_dequantize(reps, scaling=scaling, n_bits=n_bits, levels=levels,
                           generator=generator, dtype=dtype)
    logdet = likelihood_kwargs.get("logdet")
    if isinstance(logdet, Tensor) and logdet.dim() == 1 and logdet.shape[0] == b and n_draws > 1:
        likelihood_kwargs["logdet"] = logdet.repeat(n_draws)
    res = log_likelihood(model, y, generator=generator, **likelihood_kwargs)
    bpd = bits_per_dim(res.logp, y.shape, scaling=scaling, n_bits=n_bits,
                       levels=levels).reshape(n_draws, b)
    stderr = bpd.std(0) / math.sqrt(n_draws) if n_draws > 1 else None
    return BPDResult(bpd=bpd.mean(0), stderr=stderr, logp=res.logp.reshape(n_draws, b).mean(0),
                     nfe=res.nfe)
