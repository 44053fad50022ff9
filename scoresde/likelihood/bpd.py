r"""Bits per dimension of continuous and discrete data, and uniform dequantization
(Theis, van den Oord & Bethge 2016): [`bits_per_dim`][scoresde.likelihood.bpd.bits_per_dim]
derives the offsets.

**The quantization convention** (one place, shared with `scoresde.data`): discrete data
have $L$ = `levels` values $k \in \{0, \dots, L-1\}$ per dimension, and the model sees
$y = a\,w + b$ for $w \in [0, L)$, one unit-width bin $[k, k+1)$ per value, with
$(a, b) = (1/L, 0)$ for `"[0,1]"` and $(2/L, -1)$ for `"[-1,1]"`.
`uniform_dequantize` draws $w = k + u$, $u \sim U[0,1)$; `level_centers` takes the
bin centres $w = k + \tfrac12$ (the deterministic images of `scoresde.data.ImageDataset`);
`quantize` maps $y$ back to $k = \lfloor (y - b)/a \rfloor$. Over a whole data set,
`image_bits_per_dim` gives the mean bits/dim with its standard error."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models import ScoreModel, check_model
from ..validation import check_choice, check_finite, check_generator, check_int
from .ode import batches, log_likelihood

Tensor = torch.Tensor

__all__ = ["BPDResult", "bits_per_dim", "uniform_dequantize", "dequantized_bits_per_dim",
           "SCALINGS", "QUANTIZED_SCALINGS", "level_centers", "quantize", "image_bits_per_dim"]

#: data scalings understood by `bits_per_dim`
SCALINGS = ("continuous", "[0,1]", "[-1,1]")
#: the scalings of discrete data (`SCALINGS` less `"continuous"`)
QUANTIZED_SCALINGS = ("[0,1]", "[-1,1]")


@dataclass
class BPDResult:
    r"""What `dequantized_bits_per_dim` returns (per sample, shape `(B,)`).

    - `bpd`: bits per dimension of the discrete data, averaged over dequantization draws.
    - `stderr`: standard error of `bpd` across draws (`None` when `n_draws = 1`).
    - `logp`: the model-space log-density $\log p_Y(y)$, averaged over draws (nats).
    - `nfe`: network evaluations of all the solves.

    Over a data set (`image_bits_per_dim`), `mean` and `mean_stderr` summarise `bpd`.
    """

    bpd: Tensor
    stderr: Tensor | None
    logp: Tensor
    nfe: int

    @property
    def mean(self) -> float:
        r"""The mean bits/dim over the samples, $\bar b = \frac1N\sum_i b_i$."""
        return float(self.bpd.mean())

    @property
    def mean_stderr(self) -> float:
        r"""The standard error of `mean` over samples, $s_b/\sqrt N$ with $s_b$ the sample
        standard deviation of the per-sample `bpd` (NaN for one sample). Each $b_i$ is an
        independent, unbiased estimate of its sample's Jensen bound (the dequantization and
        Hutchinson noise are drawn per sample), so this covers the data, dequantization and
        probe noise together."""
        n = self.bpd.numel()
        return float(self.bpd.std() / math.sqrt(n)) if n > 1 else float("nan")


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


def _check_levels_tensor(k: Tensor, levels: int) -> None:
    """`k` holds integers in `[0, levels - 1]` (an integer tensor or a floating one)."""
    top = levels - 1
    if k.is_complex() or k.dtype == torch.bool:
        raise TypeError(f"k must hold integers, got dtype {k.dtype}")
    if k.is_floating_point() and not bool((k == torch.round(k)).all()):
        raise ValueError("k must hold integer values (the discrete data, not already scaled)")
    if k.numel() and not bool(((k >= 0) & (k <= top)).all()):
        raise ValueError(f"k must lie in [0, {top}] for levels={levels}, got values in "
                         f"[{k.min().item()}, {k.max().item()}]")


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
    if scaling not in QUANTIZED_SCALINGS:
        raise ValueError(f"scaling must be one of {QUANTIZED_SCALINGS}, got {scaling!r}")
    levels = _levels(n_bits, levels)
    check_generator(generator)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    _check_levels_tensor(k, levels)
    if dtype is None:
        dtype = k.dtype if k.is_floating_point() else torch.get_default_dtype()
    u = torch.rand(k.shape, generator=generator, dtype=dtype, device=k.device)
    a, b, _ = _scale_offset(scaling, levels)
    return a * (k.to(dtype) + u) + b


def level_centers(k: Tensor, *, scaling: str = "[0,1]", n_bits: int | None = None,
                  levels: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""The centres of the dequantization bins of discrete data:
    $y = (k + \tfrac12)/L$ (`"[0,1]"`) or $y = 2(k + \tfrac12)/L - 1$ (`"[-1,1]"`),
    i.e. `uniform_dequantize` with $u = \tfrac12$ (module docstring). For $L = 256$ and
    `"[-1,1]"` the values run from $-1 + 1/256$ to $1 - 1/256$.

    **Arguments:** `k` integers in $[0, L-1]$, any shape; `scaling` `"[0,1]"` or
    `"[-1,1]"`; `n_bits` or `levels` as in `bits_per_dim`; `dtype` of the result (default:
    `k`'s when floating, else `torch.get_default_dtype()`). **Returns:** `y`, shape of `k`;
    `quantize(y)` gives `k` back exactly.
    """
    if not isinstance(k, Tensor):
        raise TypeError(f"k must be a torch.Tensor of integers, got {type(k).__name__}")
    check_choice("scaling", scaling, QUANTIZED_SCALINGS)
    levels = _levels(n_bits, levels)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    _check_levels_tensor(k, levels)
    if dtype is None:
        dtype = k.dtype if k.is_floating_point() else torch.get_default_dtype()
    a, b, _ = _scale_offset(scaling, levels)
    return a * (k.to(dtype) + 0.5) + b


def quantize(y: Tensor, *, scaling: str = "[0,1]", n_bits: int | None = None,
             levels: int | None = None) -> Tensor:
    r"""The discrete level of model-space data: $k = \lfloor (y - b)/a \rfloor$ clipped to
    $[0, L-1]$, the bin $[k, k+1)$ that $w = (y - b)/a$ falls in (module docstring), so
    `quantize(level_centers(k)) == k` exactly and `quantize(uniform_dequantize(k)) == k`
    (up to rounding for a draw within a few ulps of a bin edge). Values outside the model
    range (a sampler's output may stray) are clipped to the nearest level, as when an image
    is saved.

    **Arguments:** `y` floating, any shape, finite; `scaling` `"[0,1]"` or `"[-1,1]"`;
    `n_bits` or `levels` as in `bits_per_dim`. **Returns:** `k` as `torch.int64`, shape
    of `y`.
    """
    if not isinstance(y, Tensor) or not y.is_floating_point():
        what = f"dtype {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
        raise TypeError(f"y must be a floating-point torch.Tensor, got {what}")
    check_choice("scaling", scaling, QUANTIZED_SCALINGS)
    levels = _levels(n_bits, levels)
    check_finite(y, "y")
    a, b, _ = _scale_offset(scaling, levels)
    return torch.floor((y - b) / a).clamp(0, levels - 1).to(torch.int64)


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


def _quantized_data(data: object, levels: object, scaling: object) -> tuple[Tensor, int, str]:
    """`(k, levels, scaling)` from a tensor plus `levels`/`scaling`, or from a data set with
    attributes `k`, `levels`, `scaling` (e.g. `scoresde.data.ImageDataset`)."""
    if isinstance(data, Tensor):
        if levels is None or scaling is None:
            raise ValueError("with a tensor of integers, give levels= and scaling= (the data's "
                             "quantization); a data set such as scoresde.data.ImageDataset "
                             "carries its own")
        k = data
    elif all(hasattr(data, a) for a in ("k", "levels", "scaling")):
        k = data.k  # type: ignore[attr-defined]
        for name, given, own in (("levels", levels, data.levels),  # type: ignore[attr-defined]
                                 ("scaling", scaling, data.scaling)):  # type: ignore[attr-defined]
            if given is not None and given != own:
                raise ValueError(f"{name}={given!r} disagrees with the data set's own {name} "
                                 f"{own!r}; leave it unset")
        levels, scaling = data.levels, data.scaling  # type: ignore[attr-defined]
        if not isinstance(k, Tensor):
            raise TypeError(f"data.k must be a torch.Tensor of integers, got {type(k).__name__}")
    else:
        raise TypeError("data must be a tensor of integers (N, *event_shape) or a data set "
                        "with attributes k, levels and scaling (scoresde.data.ImageDataset), "
                        f"got {type(data).__name__}")
    levels = check_int("levels", levels, 2)
    scaling = check_choice("scaling", scaling, QUANTIZED_SCALINGS)
    if k.dim() < 2 or k.shape[0] == 0:
        raise ValueError(f"the data must have shape (N, *event_shape) with N >= 1, got "
                         f"{tuple(k.shape)}")
    return k, levels, scaling


def image_bits_per_dim(model: ScoreModel, data: Any, *, levels: int | None = None,
                       scaling: str | None = None, n_draws: int = 1,
                       divergence: str = "hutchinson", n_probes: int = 1, batch_size: int = 64,
                       generator: torch.Generator | None = None, progress: bool = True,
                       dtype: torch.dtype | None = None, **likelihood_kwargs: Any) -> BPDResult:
    r"""Bits per dimension of a discrete data set (images `(N, C, H, W)` or any
    `(N, *event_shape)`): the mean over samples with its standard error.

    For each batch of `batch_size` samples, `dequantized_bits_per_dim` (the one place that
    dequantizes, solves and converts) draws `n_draws` uniform dequantizations per sample,
    solves the probability-flow ODE with the `divergence` estimate — by default Hutchinson's
    $\frac1P\sum_p v_p^\top(\partial h/\partial x)v_p$ with `P = n_probes` Rademacher
    probes per sample (Grathwohl et al. 2019, FFJORD; Song et al. 2021, App. D.2), kept
    fixed along each solve — and returns per-sample

    $$
    b_i = \frac1{n_\text{draws}}\sum_{j} \Big[-\frac{\log p_Y(y_{ij})}{D\ln 2}\Big]
    + \text{offset}, \qquad y_{ij} = a\,(k_i + u_{ij}) + b,
    $$

    an unbiased estimate of the Jensen upper bound $-\mathbb E_u \log_2 q_W(k_i + u)/D \ge
    -\log_2 P(k_i)/D$ (`bits_per_dim`). The summary is `result.mean`
    $= \frac1N\sum_i b_i$ and `result.mean_stderr` $= s_b/\sqrt N$, which accounts for
    the spread of the data and of the dequantization and probe noise together.

    **Arguments:**

    - `model`: a [`ScoreModel`][scoresde.models.ScoreModel] trained on data in `scaling`.
    - `data`: a data set with attributes `k` (integers `(N, *event_shape)`), `levels` and
      `scaling` — a [`scoresde.data.ImageDataset`][scoresde.data.images.ImageDataset] —
      so the quantization is not repeated; or an integer tensor `(N, *event_shape)` with
      `levels` and `scaling` given.
    - `levels`, `scaling`: the number of values per dimension ($2^{n}$ for $n$-bit data;
      17 for scikit-learn's digits) and `"[0,1]"` or `"[-1,1]"`; required with a tensor,
      optional with a data set (a value that disagrees with it is a `ValueError`).
    - `n_draws`: dequantization draws per sample.
    - `divergence`, `n_probes`: as in `log_likelihood` (`"exact"` costs `D` backward
      passes per step, fine for tiny images only).
    - `batch_size`: samples per solve (each solve holds `batch_size * n_draws` rows).
    - `generator`: the only source of randomness: each batch's dequantization noise, then
      its probes (so the numbers depend on `batch_size`).
    - `progress`: a tqdm bar over the batches.
    - `dtype`: of the dequantized data and the solve (default: the model's parameters').
    - `likelihood_kwargs`: passed to `log_likelihood` (`rtol`, `atol`, `method`, `variable`,
      `t_eps`, `probe`, ...; a `logdet` tensor of shape `(N,)` is split over the batches).

    **Returns:** a `BPDResult` over the `N` samples: per-sample `bpd`, `stderr` across
    draws (`None` for one draw), `logp` (nats, averaged over draws), the total `nfe`; and
    `mean`, `mean_stderr`.
    """
    k, levels, scaling = _quantized_data(data, levels, scaling)
    n_draws = check_int("n_draws", n_draws, 1)
    check_generator(generator)
    check_model(model)
    for key in ("generator", "scaling", "levels", "n_bits", "batch_size", "progress"):
        if key in likelihood_kwargs:
            raise TypeError(f"image_bits_per_dim got {key}= twice (it is its own argument or "
                            "the data's)")
    n = k.shape[0]
    logdet = likelihood_kwargs.pop("logdet", None)
    device = model.device
    bpd, stderr, logp, nfe = [], [], [], 0
    for lo, hi in batches(n, batch_size, progress, "bits/dim"):
        kw = dict(likelihood_kwargs)
        if logdet is not None:
            kw["logdet"] = (logdet[lo:hi] if isinstance(logdet, Tensor) and logdet.dim() == 1
                            else logdet)
        res = dequantized_bits_per_dim(model, k[lo:hi].to(device), n_draws=n_draws,
                                       scaling=scaling, levels=levels, generator=generator,
                                       dtype=dtype, divergence=divergence, n_probes=n_probes,
                                       **kw)
        bpd.append(res.bpd)
        logp.append(res.logp)
        if res.stderr is not None:
            stderr.append(res.stderr)
        nfe += res.nfe
    return BPDResult(bpd=torch.cat(bpd), stderr=torch.cat(stderr) if stderr else None,
                     logp=torch.cat(logp), nfe=nfe)
