r"""Time embeddings and a residual MLP score network for low-dimensional (toy) data.

The network computes $\mathrm{net}(x, t)$ with the same shape as ``x``; what the output
means (noise $\varepsilon$, score, $x_0$ or $v$) is decided by the
``ScoreModel`` that wraps it, not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..validation import check_even_int, check_int, check_positive
from .registry import register_net

__all__ = [
    "ACTIVATIONS",
    "EMBEDDINGS",
    "GaussianFourierEmbedding",
    "MLPScoreNet",
    "SinusoidalEmbedding",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
}
"""Activations :class:`MLPScoreNet` accepts, by the name stored in its config."""

EMBEDDINGS: tuple[str, ...] = ("fourier", "sinusoidal")
"""Time embeddings :class:`MLPScoreNet` accepts."""


def _float_time(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class GaussianFourierEmbedding(nn.Module):
    r"""Random Fourier features of time (Song et al., 2021, "Score-Based Generative Modeling
    through Stochastic Differential Equations"; Tancik et al., 2020).

    $$\mathrm{emb}(t) = \big[\sin(2\pi t W), \cos(2\pi t W)\big],$$
               \qquad W \in \mathbb R^{\mathrm{dim}/2},\ W_j \sim \mathcal N(0, \mathrm{scale}^2).

    ``W`` is drawn once at construction and kept fixed, as a (persistent) buffer: it is
    saved in the ``state_dict`` and follows ``.to()``/``.double()``, but is not trained.

    **Arguments:**

    - `dim`: embedding size (positive even int).
    - `scale`: standard deviation of the frequencies (> 0); 16 suits `t` in `[0, 1]`.
    - `generator`: source of randomness for `W` (default: PyTorch's default generator).
    """

    W: torch.Tensor

    def __init__(
        self, dim: int, scale: float = 16.0, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.dim = check_even_int("dim", dim, " (the embedding is made of sin/cos pairs)")
        self.scale = check_positive("scale", scale)
        device = None if generator is None else generator.device
        w = torch.randn(self.dim // 2, generator=generator, device=device) * self.scale
        self.register_buffer("W", w.to(torch.empty(0).device))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """**Arguments:** `t`, a tensor of any shape `S` (cast to the buffer's dtype).

        **Returns:** the embedding, shape `(*S, dim)`.
        """
        t = t.to(dtype=self.W.dtype, device=self.W.device)
        proj = (2.0 * math.pi) * t[..., None] * self.W
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"


class SinusoidalEmbedding(nn.Module):
    r"""Transformer / DDPM positional embedding of $s = t \cdot \mathrm{time\_scale}$
    (Vaswani et al., 2017; Ho et al., 2020).

    $$\mathrm{emb}(t) = \big[\sin(s\,\omega_j), \cos(s\,\omega_j)\big]_{j < d/2},$$
               \qquad \omega_j = \mathrm{max\_period}^{-j/(d/2)}.

    With the default ``time_scale = 1000`` a continuous time $t \in [0, 1]$ is embedded
    like DDPM's integer step index. No parameters or buffers; the output has ``t``'s floating
    dtype (the default dtype for integer ``t``).

    **Arguments:**

    - `dim`: embedding size `d` (positive even int).
    - `max_period`: longest period of the sinusoids (> 0).
    - `time_scale`: factor applied to `t` before embedding (> 0).
    """

    def __init__(self, dim: int, max_period: float = 10000.0, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.dim = check_even_int("dim", dim, " (the embedding is made of sin/cos pairs)")
        self.max_period = check_positive("max_period", max_period)
        self.time_scale = check_positive("time_scale", time_scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """**Arguments:** `t`, a tensor of any shape `S`.

        **Returns:** the embedding, shape `(*S, dim)`.
        """
        t = _float_time(t)
        half = self.dim // 2
        j = torch.arange(half, dtype=t.dtype, device=t.device)
        freqs = torch.exp(-math.log(self.max_period) * j / half)
        args = (t * self.time_scale)[..., None] * freqs
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}, time_scale={self.time_scale}"


def _linear(n_in: int, n_out: int, skip_init: bool) -> nn.Linear:
    if skip_init:  # parameters are set by reset_parameters(generator); no global RNG use
        return nn.utils.skip_init(nn.Linear, n_in, n_out)
    return nn.Linear(n_in, n_out)


class _ResBlock(nn.Module):
    """Pre-activation residual block: ``h + W act(h + P e)``."""

    def __init__(
        self, hidden: int, embed_dim: int, activation: type[nn.Module], skip_init: bool
    ) -> None:
        super().__init__()
        self.temb = _linear(embed_dim, hidden, skip_init)
        self.act = activation()
        self.linear = _linear(hidden, hidden, skip_init)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.linear(self.act(h + self.temb(emb)))


@register_net("mlp")
class MLPScoreNet(nn.Module):
    r"""Residual MLP $\mathrm{net}(x, t)$ for data of shape `(B, dim)`.

    $$
    e = \mathrm{emb}(t), \quad h_0 = W_{\mathrm{in}} x, \quad
    h_{k+1} = h_k + W_k\, \sigma(h_k + P_k e), \quad
    \mathrm{net}(x, t) = W_{\mathrm{out}}\, \sigma(h_{\mathrm{depth}})
    $$
    (all $W, P$ affine, $\sigma$ the activation): the time embedding is projected
    and added in every block. At the defaults (2-D data) it has 75,138 parameters.

    **Arguments:**

    - `dim`: data dimension (int >= 1).
    - `hidden`: width of the residual stream (int >= 1).
    - `depth`: number of residual blocks (int >= 1).
    - `embedding`: `"fourier"` (:class:`GaussianFourierEmbedding`) or `"sinusoidal"`
      (:class:`SinusoidalEmbedding`).
    - `embed_dim`: size of the time embedding (positive even int).
    - `activation`: a name from :data:`ACTIVATIONS` or one of its classes (e.g. `nn.SiLU`).
    - `fourier_scale`: `scale` of the Fourier embedding.
    - `time_scale`: `time_scale` of the sinusoidal embedding.
    - `generator`: if given, the Fourier frequencies and all weights are drawn from it (a
      CPU generator; PyTorch's default initialisation, without touching the global RNG);
      otherwise PyTorch's default generator is used.

    :meth:`config` returns the constructor arguments (JSON-able) and :meth:`from_config`
    rebuilds the architecture; load the `state_dict` to restore the weights and the Fourier
    frequencies.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        embedding: str = "fourier",
        embed_dim: int = 64,
        activation: str | type[nn.Module] = nn.SiLU,
        *,
        fourier_scale: float = 16.0,
        time_scale: float = 1000.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, 1)
        self.hidden = check_int("hidden", hidden, 1)
        self.depth = check_int("depth", depth, 1)
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        self.embedding = embedding
        self.embed_dim = check_even_int("embed_dim", embed_dim, " (the embedding is made of sin/cos pairs)")
        self.activation = _activation_name(activation)
        self.fourier_scale = check_positive("fourier_scale", fourier_scale)
        self.time_scale = check_positive("time_scale", time_scale)

        self.embed: nn.Module
        if embedding == "fourier":
            self.embed = GaussianFourierEmbedding(
                self.embed_dim, scale=self.fourier_scale, generator=generator
            )
        else:
            self.embed = SinusoidalEmbedding(self.embed_dim, time_scale=self.time_scale)
        act = ACTIVATIONS[self.activation]
        skip = generator is not None
        self.inp = _linear(self.dim, self.hidden, skip)
        self.blocks = nn.ModuleList(
            _ResBlock(self.hidden, self.embed_dim, act, skip) for _ in range(self.depth)
        )
        self.out_act = act()
        self.out = _linear(self.hidden, self.dim, skip)
        if generator is not None:
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw every weight and bias with PyTorch's default `nn.Linear` initialisation
        (Kaiming-uniform weights, uniform biases in `±1/sqrt(fan_in)`) from `generator`.
        The Fourier frequencies are left unchanged.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """**Arguments:**

        - `x`: data, shape `(B, dim)`.
        - `t`: times, shape `(B,)`, or a scalar (tensor or number) used for every sample.

        **Returns:** a tensor of shape `(B, dim)`, with `x`'s dtype.
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.dim}), got {shape}")
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(
                f"t must be a scalar or have shape (B,) = ({batch},), got {tuple(t.shape)}"
            )
        emb = self.embed(t.to(x.dtype))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.out_act(h))

    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able; the activation by name)."""
        return {
            "dim": self.dim,
            "hidden": self.hidden,
            "depth": self.depth,
            "embedding": self.embedding,
            "embed_dim": self.embed_dim,
            "activation": self.activation,
            "fourier_scale": self.fourier_scale,
            "time_scale": self.time_scale,
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> MLPScoreNet:
        """Rebuild the architecture from :meth:`config`'s output (weights are fresh; load
        the `state_dict` to restore them)."""
        if not isinstance(cfg, Mapping):
            raise ValueError(f"cfg must be a mapping, got {type(cfg).__name__}")
        allowed = {
            "dim", "hidden", "depth", "embedding", "embed_dim", "activation",
            "fourier_scale", "time_scale",
        }  # fmt: skip
        unknown = sorted(set(cfg) - allowed)
        if unknown:
            raise ValueError(
                f"unknown MLPScoreNet config keys {unknown}; allowed: {sorted(allowed)}"
            )
        return cls(**cfg)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


def _activation_name(activation: object) -> str:
    if isinstance(activation, str):
        name = activation.lower()
        if name in ACTIVATIONS:
            return name
    else:
        for name, cls in ACTIVATIONS.items():
            if activation is cls:
                return name
    raise ValueError(
        f"activation must be one of {sorted(ACTIVATIONS)} (a name or the nn.Module class), "
        f"got {activation!r}"
    )
