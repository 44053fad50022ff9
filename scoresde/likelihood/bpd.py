r"""Bits per dimension of continuous and discrete data, and uniform dequantization
(Theis, van den Oord & Bethge 2016): [`bits_per_dim`][scoresde.likelihood.bpd.bits_per_dim]
derives the offsets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models import ScoreModel
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


def _scale_offset(scaling: str, n_bits: int) -> tuple[float, float, float]:
    """`(a, b, offset_bits)` with model-space `y = a (k + u) + b` and `-log2 a`."""
    if scaling == "[0,1]":
        return 2.0 ** -n_bits, 0.0, float(n_bits)
    if scaling == "[-1,1]":
        return 2.0 ** (1 - n_bits), -1.0, float(n_bits - 1)
    return 1.0, 0.0, 0.0


def bits_per_dim(logp: Tensor, x_shape: Sequence[int] | torch.Size, *, scaling: str = "continuous",
                 n_bits: int = 8) -> Tensor:
    r"""Convert per-sample log-densities (nats) into bits per dimension.

    $\mathrm{bpd} = -\dfrac{\log p_Y(y)}{D\ln 2} + \text{offset}$ with
    $D = \prod$ `x_shape[1:]`, where $\log p_Y(y)$ is the log-density the
    model assigns to the data **as it sees them** (`logp`, e.g. from
    `log_likelihood`) and the offset accounts for the data scaling:

    - `"continuous"`: the data are continuous and `y` is the data itself; offset 0.
    - `"[0,1]"`: `n_bits`-bit integers $k \in \{0,\dots,2^n-1\}^D$ dequantized as
      $y = (k + u)/2^n \in [0, 1)$, $u \sim U[0,1)^D$; offset $n$ (8 bits).
    - `"[-1,1]"`: $y = 2(k + u)/2^n - 1 \in [-1, 1)$; offset $n - 1$ (7 bits).

    **Derivation.** Write $w = k + u \in [0, 2^n)^D$ (one unit-width bin per value)
    and $y = a w + b$. A density $p_Y$ on the model's space is the density
    $q_W(w) = a^D p_Y(aw + b)$ on $w$ (the Jacobian $|dy/dw| = a$ per
    dimension). The discrete model is $P(k) = \int_{[0,1)^D} q_W(k + u)\,du$, and by
    Jensen (Theis, van den Oord & Bethge 2016; Ho et al. 2019, Flow++)
    $\log P(k) \ge \mathbb E_u \log q_W(k+u) = \mathbb E_u\log p_Y(y) + D\log a$. So

    $$
    \mathrm{bpd} = -\frac{\log_2 P(k)}{D}
    \le -\frac{\mathbb E_u \log p_Y(y)}{D\ln 2} - \log_2 a,
    $$

    with $a = 2^{-n}$ for `[0,1]` (offset $-\log_2 a = n$) and
    $a = 2^{1-n}$ for `[-1,1]` (offset $n - 1$). The two agree: the same
    data mapped to `[-1,1]` have $\log p_{Y'}(y') = \log p_Y(y) - D\log 2$, i.e.
    one bit per dimension more on the first term and one less in the offset. Pass one
    `logp` per dequantization draw and average the returned bpd over draws
    (`dequantized_bits_per_dim` does it).

    **Arguments:** `logp` of shape `(B,)`; `x_shape` the full data shape
    `(B, *event_shape)` (`x.shape`); `scaling` one of `SCALINGS`; `n_bits`
    the bit depth of the discrete data (ignored for `"continuous"`).

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
    n_bits = check_int("n_bits", n_bits, 1)
    d = math.prod(shape[1:])
    _, _, offset = _scale_offset(scaling, n_bits)
    return -logp / (d * math.log(2.0)) + offset


def uniform_dequantize(k: Tensor, *, scaling: str = "[0,1]", n_bits: int = 8,
                       generator: torch.Generator | None = None, dtype: torch.dtype | None = None
                       ) -> Tensor:
    r"""Uniform dequantization of `n_bits`-bit data (Theis et al. 2016).

    $y = (k + u)/2^n$ (`"[0,1]"`) or $y = 2(k + u)/2^n - 1$ (`"[-1,1]"`),
    $u \sim U[0,1)$ independently per entry, drawn from `generator`.

    **Arguments:** `k` integers in $[0, 2^n - 1]$ (an integer tensor, or a
    floating one holding integers), any shape; `dtype` of the result (default
    `torch.get_default_dtype()`). **Returns:** `y`, shape of `k`.
    """
    if not isinstance(k, Tensor):
        raise TypeError(f"k must be a torch.Tensor of integers, got {type(k).__name__}")
    if scaling not in ("[0,1]", "[-1,1]"):
        raise ValueError(f"scaling must be one of ('[0,1]', '[-1,1]'), got {scaling!r}")
    n_bits = check_int("n_bits", n_bits, 1)
    check_generator(generator)
    top = 2 ** n_bits - 1
    if k.is_complex() or k.dtype == torch.bool:
        raise TypeError(f"k must hold integers, got dtype {k.dtype}")
    if k.is_floating_point() and not bool((k == torch.round(k)).all()):
        raise ValueError("k must hold integer values (the discrete data, not already scaled)")
    if k.numel() and not bool(((k >= 0) & (k <= top)).all()):
        raise ValueError(f"k must lie in [0, {top}] for n_bits={n_bits}, got values in "
                         f"[{k.min().item()}, {k.max().item()}]")
    dtype = dtype or torch.get_default_dtype()
    u = torch.rand(k.shape, generator=generator, dtype=dtype, device=k.device)
    a, b, _ = _scale_offset(scaling, n_bits)
    return a * (k.to(dtype) + u) + b


def dequantized_bits_per_dim(model: ScoreModel, k: Tensor, *, n_draws: int = 1,
                             scaling: str = "[0,1]", n_bits: int = 8,
                             generator: torch.Generator | None = None,
                             dtype: torch.dtype | None = None, **likelihood_kwargs: Any) -> BPDResult:
    r"""Bits per dimension of discrete data: `n_draws` uniform dequantizations per sample
    (`uniform_dequantize`), a probability-flow likelihood for each
    (`log_likelihood`, all draws in one call), `bits_per_dim` with the
    scaling's offset, averaged over draws — an estimate of the Jensen upper bound
    $-\mathbb E_u\log_2 q_W(k+u)/D \ge -\log_2 P(k)/D$.

    **Arguments:** `k` integers of shape `(B, *event_shape)`; `generator` draws the
    dequantization noise and then the Hutchinson probes; `dtype` of the dequantized data;
    `likelihood_kwargs` go to `log_likelihood` (`divergence`, `rtol`,
    `batch_size`, ...).

    **Returns:** a `BPDResult` (per sample `bpd`, its `stderr` across draws,
    the averaged model-space `logp`, `nfe`).
    """
    if not isinstance(k, Tensor) or k.dim() < 2 or k.shape[0] == 0:
        raise ValueError(f"k must be a tensor of shape (B, *event_shape), got "
                         f"{tuple(k.shape) if isinstance(k, Tensor) else type(k).__name__}")
    n_draws = check_int("n_draws", n_draws, 1)
    b = k.shape[0]
    reps = k.unsqueeze(0).expand((n_draws,) + tuple(k.shape)).reshape((n_draws * b,) + tuple(k.shape[1:]))
    y = uniform_dequantize(reps, scaling=scaling, n_bits=n_bits, generator=generator, dtype=dtype)
    res = log_likelihood(model, y, generator=generator, **likelihood_kwargs)
    bpd = bits_per_dim(res.logp, y.shape, scaling=scaling, n_bits=n_bits).reshape(n_draws, b)
    stderr = bpd.std(0) / math.sqrt(n_draws) if n_draws > 1 else None
    return BPDResult(bpd=bpd.mean(0), stderr=stderr, logp=res.logp.reshape(n_draws, b).mean(0),
                     nfe=res.nfe)
