r"""A time-conditioned U-Net for images, optionally class-conditioned.

The architecture is the DDPM U-Net (Ho, Jain & Abbeel 2020, "Denoising Diffusion
Probabilistic Models", Appendix B; the PixelCNN++-style Wide-ResNet U-Net of their
`diffusion_tf/models/unet.py`), which Song et al. (2021, "Score-Based Generative Modeling
through Stochastic Differential Equations") call DDPM and extend to DDPM++/NCSN++: residual
blocks with GroupNorm, SiLU and dropout, the time embedding added in every block,
single-head self-attention at chosen resolutions and in the middle, skip connections by
concatenation, and zero-initialised output layers. Class conditioning (a learned label
embedding added to the time embedding, with an extra "null" label for classifier-free
guidance) follows Dhariwal & Nichol (2021) and Ho & Salimans (2022).

As for every network here, $\mathrm{net}(x, t)$ has the shape of `x`; what it means (noise,
score, $x_0$ or $v$) is decided by the [`ScoreModel`][scoresde.models.ScoreModel] that wraps
it. There are no batch statistics (GroupNorm only), so in `eval()` mode (or with
`dropout=0`) sample $i$'s output depends on sample $i$'s inputs alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_choice, check_even_int, check_int, check_positive, check_real
from .mlp import EMBEDDINGS, GaussianFourierEmbedding, SinusoidalEmbedding
from .registry import register_net

Tensor = torch.Tensor

__all__ = ["UNet", "PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "in_channels": 1, "channels": 32, "ch_mult": (1, 1), "num_res_blocks": 1,
        "attention_levels": (), "dropout": 0.0, "norm_groups": 8, "image_size": 8,
    },
    "small": {
        "in_channels": 1, "channels": 64, "ch_mult": (1, 2, 2), "num_res_blocks": 2,
        "attention_levels": (1,), "dropout": 0.1, "norm_groups": 32, "image_size": 28,
    },
    "ddpm_cifar10": {
        "in_channels": 3, "channels": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 2,
        "attention_levels": (1,), "dropout": 0.1, "norm_groups": 32, "image_size": 32,
    },
}  # fmt: skip
"""Named configurations for [`UNet.preset`][scoresde.nets.unet.UNet.preset]: `"tiny"` for the
8x8 digits (trains on a laptop CPU), `"small"` for 28x28 images, `"ddpm_cifar10"` Ho et al.'s
CIFAR-10 network (attention at 16x16). Parameter counts are in docs/nets.md."""

_CONFIG_KEYS = (
    "in_channels", "channels", "ch_mult", "num_res_blocks", "attention_levels", "dropout",
    "embedding", "embed_dim", "fourier_scale", "time_scale", "num_classes", "num_heads",
    "norm_groups", "image_size",
)  # fmt: skip


def _zero_init(module: nn.Module) -> nn.Module:
    """Mark `module` to be initialised to zero by `UNet.reset_parameters`."""
    module.zero_init = True
    return module


class _ResBlock(nn.Module):
    r"""$h = \mathrm{conv}_1(\sigma(\mathrm{GN}(x))) + W\sigma(e)$,
    $\mathrm{out} = \mathrm{skip}(x) + \mathrm{conv}_2(\mathrm{drop}(\sigma(\mathrm{GN}(h))))$
    (DDPM's `resnet_block`; `skip` is a 1x1 conv when the channel count changes), followed
    by self-attention if `attention`."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int,
                 attention: bool, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.attn = _Attention(c_out, groups, heads) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        h = self.skip(x) + h
        return h if self.attn is None else self.attn(h)


class _Attention(nn.Module):
    r"""Self-attention over the pixels, $x + W_o\,\mathrm{softmax}(QK^\top/\sqrt{d})V$ with
    $Q, K, V$ 1x1 convolutions of $\mathrm{GN}(x)$ (DDPM's `attn_block`; `heads` > 1 splits
    the channels into heads of size $d$)."""

    def __init__(self, channels: int, groups: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)          # each (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)      # scale 1/sqrt(d)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class _Downsample(nn.Module):
    """A 3x3 convolution with stride 2 (DDPM's `downsample` with `resamp_with_conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2, then a 3x3 convolution (DDPM's `upsample`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@register_net("unet")
class UNet(nn.Module):
    r"""Time-conditioned U-Net $\mathrm{net}(x, t, y)$ for images of shape `(B, C, H, W)`:
    the DDPM architecture (Ho et al. 2020), the "DDPM" baseline of Song et al. (2021).

    **Architecture.** The time embedding
    $e = W_2\,\sigma(W_1\,\mathrm{emb}(t))$ (width `4 * channels`; $\mathrm{emb}$ sinusoidal
    or Gaussian Fourier, $\sigma$ = SiLU), plus a learned label embedding $E[y]$ when
    `num_classes` is set, is fed to every residual block. A 3x3 convolution maps the input
    to `channels`; then for each level $l$ (resolution $H/2^l \times W/2^l$, width
    `channels * ch_mult[l]`) come `num_res_blocks` residual blocks (each followed by
    self-attention if `l in attention_levels`) and a stride-2 convolution (not after the
    last level); the middle is residual block, attention, residual block; the up path
    mirrors the down path with `num_res_blocks + 1` blocks per level, each taking the
    matching down-path activation concatenated to its input, and nearest-neighbour
    upsampling with a 3x3 convolution; the output is $\mathrm{conv}(\sigma(\mathrm{GN}(h)))$.
    Residual block: $h = \mathrm{conv}(\sigma(\mathrm{GN}(x))) + W\sigma(e)$,
    $\mathrm{out} = \mathrm{skip}(x) + \mathrm{conv}(\mathrm{dropout}(\sigma(\mathrm{GN}(h))))$.
    GroupNorm (no batch statistics) everywhere.

    **Arguments:**

    - `in_channels`: image channels `C` (the output has the same).
    - `channels`: base width (int >= 1).
    - `ch_mult`: width multiplier per level (non-empty sequence of ints >= 1); `H` and `W`
      must be divisible by `2 ** (len(ch_mult) - 1)`.
    - `num_res_blocks`: residual blocks per level on the down path (int >= 1).
    - `attention_levels`: levels (indices into `ch_mult`) with self-attention after each
      residual block. At 32x32, DDPM's "attention at 16x16" is `(1,)`. The middle block
      always has attention.
    - `dropout`: dropout rate in the residual blocks (in `[0, 1)`).
    - `embedding`: `"sinusoidal"` ([`SinusoidalEmbedding`][scoresde.nets.mlp.SinusoidalEmbedding],
      DDPM's, default) or `"fourier"`
      ([`GaussianFourierEmbedding`][scoresde.nets.mlp.GaussianFourierEmbedding], NCSN++'s).
    - `embed_dim`: size of the time embedding before the MLP (positive even int; default
      `channels`, as DDPM).
    - `fourier_scale`, `time_scale`: `scale` of the Fourier embedding, `time_scale` of the
      sinusoidal one (default 1000: $t \in [0, 1]$ is embedded like DDPM's step index).
    - `num_classes`: `K` for class conditioning (`None`: unconditional). The label
      embedding has `K + 1` rows; label `K` ([`null_label`][scoresde.nets.unet.UNet.null_label])
      is the null class of classifier-free guidance.
    - `num_heads`: attention heads (must divide every width with attention; 1 in DDPM).
    - `norm_groups`: GroupNorm groups (must divide `channels * m` for every `m` in
      `ch_mult` and `channels`; 32 in DDPM).
    - `image_size`: `None` (any `H, W` divisible by `2 ** (len(ch_mult) - 1)`), or the one
      size `S` or `(H, W)` the network accepts, checked here and in `forward`.
    - `generator`: if given, the Fourier frequencies and all weights are drawn from it (see
      [`reset_parameters`][scoresde.nets.unet.UNet.reset_parameters]), without touching the
      global RNG; otherwise PyTorch's default generator is used.

    :meth:`config` returns the constructor arguments (JSON-able) and :meth:`from_config`
    rebuilds the architecture (registered as `"unet"` in
    [`NETS`][scoresde.nets.registry.NETS], so checkpoints reload through
    [`load_model`][scoresde.training.checkpoint.load_model]); :meth:`preset` builds the
    named configurations of :data:`PRESETS`.

    Works in float32, float64 and bfloat16 (`net.to(dtype)`); the time embedding is
    computed in at least float32 and then cast to the network's dtype. Dropout, in
    `train()` mode only, draws from PyTorch's global RNG of the device.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (1,),
        dropout: float = 0.1,
        embedding: str = "sinusoidal",
        embed_dim: int | None = None,
        *,
        fourier_scale: float = 16.0,
        time_scale: float = 1000.0,
        num_classes: int | None = None,
        num_heads: int = 1,
        norm_groups: int = 32,
        image_size: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.channels = check_int("channels", channels, 1)
        self.ch_mult = _int_tuple("ch_mult", ch_mult, 1)
        if not self.ch_mult:
            raise ValueError("ch_mult must have at least one level, got ()")
        self.num_res_blocks = check_int("num_res_blocks", num_res_blocks, 1)
        levels = len(self.ch_mult)
        self.attention_levels = tuple(sorted(set(_int_tuple("attention_levels",
                                                            attention_levels, 0))))
        if any(a >= levels for a in self.attention_levels):
            raise ValueError(f"attention_levels must be level indices in [0, {levels - 1}] "
                             f"(one per entry of ch_mult), got {self.attention_levels}")
        self.dropout = check_real("dropout", dropout, low=0.0, high=1.0, high_open=True)
        self.embedding = check_choice("embedding", embedding, EMBEDDINGS)
        self.embed_dim = check_even_int(
            "embed_dim", self.channels if embed_dim is None else embed_dim,
            " (the embedding is made of sin/cos pairs)")
        self.fourier_scale = check_positive("fourier_scale", fourier_scale)
        self.time_scale = check_positive("time_scale", time_scale)
        self.num_classes = None if num_classes is None else check_int("num_classes",
                                                                      num_classes, 1)
        self.num_heads = check_int("num_heads", num_heads, 1)
        self.norm_groups = check_int("norm_groups", norm_groups, 1)
        widths = [self.channels * m for m in (1, *self.ch_mult)]
        bad = sorted({w for w in widths if w % self.norm_groups})
        if bad:
            raise ValueError(f"norm_groups={self.norm_groups} must divide every width "
                             f"channels * m (m in (1, *ch_mult)), but not {bad}")
        bad = sorted({self.channels * self.ch_mult[a] for a in (*self.attention_levels, levels - 1)
                      if self.channels * self.ch_mult[a] % self.num_heads})
        if bad:
            raise ValueError(f"num_heads={self.num_heads} must divide the widths with "
                             f"attention, but not {bad}")
        self.image_size = _image_size(image_size, 2 ** (levels - 1))

        emb_dim = 4 * self.channels
        # PyTorch's default initialisation, overwritten by reset_parameters below, runs on a
        # forked CPU RNG state, so the global RNG is left as it was (meta-device construction
        # would avoid the work, but its first use imports ~500 modules, about a second)
        with torch.random.fork_rng(devices=[]):
            self.temb = nn.Sequential(nn.Linear(self.embed_dim, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
            self.label_embed = (nn.Embedding(self.num_classes + 1, emb_dim)
                                if self.num_classes is not None else None)
            self.conv_in = nn.Conv2d(self.in_channels, self.channels, 3, padding=1)
            block = {"emb_dim": emb_dim, "dropout": self.dropout, "groups": self.norm_groups,
                     "heads": self.num_heads}
            skips = [self.channels]
            c = self.channels
            self.down = nn.ModuleList()
            for level, mult in enumerate(self.ch_mult):
                attn = level in self.attention_levels
                for _ in range(self.num_res_blocks):
                    self.down.append(_ResBlock(c, self.channels * mult, attention=attn, **block))
                    c = self.channels * mult
                    skips.append(c)
                if level != levels - 1:
                    self.down.append(_Downsample(c))
                    skips.append(c)
            self.mid = nn.ModuleList([_ResBlock(c, c, attention=True, **block),
                                      _ResBlock(c, c, attention=False, **block)])
            self.up = nn.ModuleList()
            for level in reversed(range(levels)):
                attn = level in self.attention_levels
                for _ in range(self.num_res_blocks + 1):
                    c_out = self.channels * self.ch_mult[level]
                    self.up.append(_ResBlock(c + skips.pop(), c_out, attention=attn, **block))
                    c = c_out
                if level != 0:
                    self.up.append(_Upsample(c))
            self.norm_out = nn.GroupNorm(self.norm_groups, c, eps=1e-6)
            self.conv_out = _zero_init(nn.Conv2d(c, self.in_channels, 3, padding=1))
        self.embed: nn.Module
        if self.embedding == "fourier":
            self.embed = GaussianFourierEmbedding(self.embed_dim, scale=self.fourier_scale,
                                                  generator=generator)
        else:
            self.embed = SinusoidalEmbedding(self.embed_dim, time_scale=self.time_scale)
        self.reset_parameters(generator)

    # ----- construction helpers ----------------------------------------------------------
    @classmethod
    def preset(cls, name: str, *, generator: torch.Generator | None = None,
               **overrides: Any) -> UNet:
        """The network of the named configuration in :data:`PRESETS` (`"tiny"`, `"small"`,
        `"ddpm_cifar10"`), with any constructor argument overridden, e.g.
        `UNet.preset("tiny", num_classes=10)`."""
        check_choice("name", name, tuple(PRESETS))
        return cls(**{**PRESETS[name], **overrides}, generator=generator)

    @property
    def null_label(self) -> int | None:
        """The label of the null class, `num_classes` (`None` for an unconditional net):
        `forward(x, t)` without `y` uses it, and classifier-free guidance passes it as the
        unconditional input."""
        return self.num_classes

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw every weight from `generator`, as DDPM does: convolution and linear weights
        Xavier-uniform (`variance_scaling(1, "fan_avg", "uniform")`), biases zero, the last
        convolution of each residual block, the attention output projection and the output
        convolution zero (DDPM scales these by 1e-10; zero as in Dhariwal & Nichol 2021, so a
        fresh network outputs exactly 0), GroupNorm scale 1 and shift 0, the label embedding
        standard normal. The Fourier frequencies are left unchanged."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    if getattr(m, "zero_init", False):
                        m.weight.zero_()
                    else:
                        nn.init.xavier_uniform_(m.weight, generator=generator)
                    m.bias.zero_()
                elif isinstance(m, nn.GroupNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                elif isinstance(m, nn.Embedding):
                    nn.init.normal_(m.weight, generator=generator)

    # ----- forward -----------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor | float, **cond: Tensor) -> Tensor:
        """**Arguments:**

        - `x`: images, shape `(B, in_channels, H, W)` (floating, the network's dtype).
        - `t`: times, shape `(B,)`, or a scalar used for every sample.
        - `y` (keyword, the only conditioning accepted): class labels, an integer tensor of
          shape `(B,)` with values in `[0, num_classes]` (`num_classes` is the null class);
          omitted or `None`: the null class. Only for a network built with `num_classes`.

        **Returns:** a tensor of the shape and dtype of `x`.

        **Raises:** `TypeError` for conditioning other than `y`, for `y` given to an
        unconditional network, or a non-integer `y`; `ValueError` for wrong shapes, a size
        that does not fit, or labels outside `[0, num_classes]`.
        """
        y = cond.pop("y", None)
        if cond:
            raise TypeError(f"UNet accepts only the conditioning keyword y (class labels), "
                            f"got {sorted(cond)}")
        self._check_images(x)
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({batch},), "
                             f"got {tuple(t.shape)}")
        # embed in at least float32 (bfloat16 cannot resolve t * 1000), then cast
        t = t.to(torch.promote_types(x.dtype, torch.float32))
        emb = self.temb(self.embed(t).to(x.dtype))
        if self.label_embed is not None:
            emb = emb + self.label_embed(self._labels(y, batch, x.device))
        elif y is not None:
            raise TypeError("y (class labels) was given to an unconditional UNet; build it "
                            "with num_classes=K for class conditioning")
        emb = F.silu(emb)

        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb) if isinstance(m, _ResBlock) else m(h)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb)
        for m in self.up:
            h = m(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(m, _ResBlock) else m(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _check_images(self, x: object) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of images, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        size = tuple(x.shape[2:])
        if self.image_size is not None:
            if size != self.image_size:
                raise ValueError(f"this UNet was built for images of size {self.image_size} "
                                 f"(image_size), got {size}")
            return
        f = 2 ** (len(self.ch_mult) - 1)
        if size[0] % f or size[1] % f:
            raise ValueError(f"H and W must be divisible by 2 ** (len(ch_mult) - 1) = {f} "
                             f"(ch_mult={self.ch_mult}), got (H, W) = {size}")

    def _labels(self, y: object, batch: int, device: torch.device) -> Tensor:
        k = self.num_classes
        if y is None:
            return torch.full((batch,), k, dtype=torch.long, device=device)
        if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() \
                or y.dtype == torch.bool:
            what = f"dtype {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise TypeError(f"y must be an integer tensor of class labels in [0, {k}], "
                            f"got {what}")
        if y.shape != (batch,):
            raise ValueError(f"y must have shape (B,) = ({batch},), got {tuple(y.shape)}")
        y = y.to(device=device, dtype=torch.long)
        if y.device.type == "cpu":
            bad = (y < 0) | (y > k)
            if bool(bad.any()):
                raise ValueError(f"y contains {int(y[bad][0])}; labels must lie in [0, {k}] "
                                 f"({k} = null_label, the null class)")
        else:
            torch._assert_async(((y >= 0) & (y <= k)).all(), f"y outside [0, {k}]")
        return y

    # ----- config ------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able: sequences as lists)."""
        return {
            "in_channels": self.in_channels,
            "channels": self.channels,
            "ch_mult": list(self.ch_mult),
            "num_res_blocks": self.num_res_blocks,
            "attention_levels": list(self.attention_levels),
            "dropout": self.dropout,
            "embedding": self.embedding,
            "embed_dim": self.embed_dim,
            "fourier_scale": self.fourier_scale,
            "time_scale": self.time_scale,
            "num_classes": self.num_classes,
            "num_heads": self.num_heads,
            "norm_groups": self.norm_groups,
            "image_size": None if self.image_size is None else list(self.image_size),
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> UNet:
        """Rebuild the architecture from :meth:`config`'s output (weights are fresh; load
        the `state_dict` to restore them and the Fourier frequencies)."""
        if not isinstance(cfg, Mapping):
            raise ValueError(f"cfg must be a mapping, got {type(cfg).__name__}")
        unknown = sorted(set(cfg) - set(_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown UNet config keys {unknown}; allowed: {sorted(_CONFIG_KEYS)}")
        return cls(**cfg)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


def _int_tuple(name: str, value: object, minimum: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of integers >= {minimum}, "
                        f"got {type(value).__name__} {value!r}")
    return tuple(check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(value))


def _image_size(value: object, factor: int) -> tuple[int, int] | None:
    if value is None:
        return None
    size = (value, value) if not isinstance(value, Sequence) or isinstance(value, str) \
        else tuple(value)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (H, W), got {value!r}")
    h, w = (check_int("image_size", s, 1) for s in size)
    if h % factor or w % factor:
        raise ValueError(f"image_size {(h, w)} is not divisible by 2 ** (len(ch_mult) - 1) = "
                         f"{factor}: every level halves the resolution")
    return h, w

