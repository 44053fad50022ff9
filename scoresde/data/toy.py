r"""Two-dimensional toy datasets for score-SDE experiments.

Every sampler here draws its randomness only from an explicit ``torch.Generator`` (or, when
``generator=None``, from PyTorch's default generator); there is no global seeding, no NumPy
RNG and no scikit-learn. Samples are i.i.d., the code is fully vectorised, and the arithmetic
is done in float64 on the generator's device before the result is cast to the requested
``dtype``/``device`` (so the same seed gives the same points in float32 and float64, up to
rounding).

**Scaling convention.** Every dataset is centred and *isotropically* scaled (the shape is not
distorted) so that, exactly in expectation,

$$\mathbb{E}[x] = 0, \qquad \mathbb{E}\|x\|^2 = 2,$$

the first two moments of the VP prior $\mathcal N(0, I_2)$ (average per-coordinate
variance 1). The centre and scale are computed in closed form from the dataset's parameters,
so the convention holds for every parameter value; shape parameters such as ``noise`` are
given in the *raw* units of the construction described in each docstring. The one exception
is :func:`eight_gaussians`, whose ``radius`` and ``std`` are in output units (so that
:func:`eight_gaussians_params` describes the sampled mixture literally); its defaults are
chosen so the convention holds. The per-coordinate standard deviations at the default
parameters are listed in each docstring; they all lie between 0.7 and 1.3.

The parametrisations follow the toy problems popularised by FFJORD (Grathwohl et al., 2019)
and used across the score-based literature; the code is our own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..validation import check_int, check_positive, check_real

__all__ = [
    "DATASETS",
    "register_dataset",
    "TOY_DATASETS",
    "checkerboard",
    "eight_gaussians",
    "eight_gaussians_params",
    "moons",
    "pinwheel",
    "rings",
    "sample_toy",
    "swiss_roll",
]


# --------------------------------------------------------------------------------------
# helpers


class _Ctx:
    """Where and in which precision to draw, and what to return."""

    def __init__(
        self,
        generator: torch.Generator | None,
        dtype: torch.dtype | None,
        device: torch.device | str | None,
    ) -> None:
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.generator = generator
        self.out_dtype = torch.get_default_dtype() if dtype is None else dtype
        self.out_device = None if device is None else torch.device(device)
        if generator is not None:
            self.device = generator.device
        elif self.out_device is not None:
            self.device = self.out_device
        else:
            self.device = torch.device("cpu")
        # MPS has no float64; everything else computes in double precision.
        self.work = torch.float32 if self.device.type == "mps" else torch.float64

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device, dtype=self.work)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.work)

    def randint(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=self.generator, device=self.device)

    def finish(
        self, x: torch.Tensor, center: tuple[float, float] = (0.0, 0.0), scale: float = 1.0
    ) -> torch.Tensor:
        c = torch.tensor(center, dtype=x.dtype, device=x.device)
        x = (x - c) * scale
        device = x.device if self.out_device is None else self.out_device
        return x.to(device=device, dtype=self.out_dtype)


def _scale_for(total_variance: float) -> float:
    """Isotropic factor that maps ``E||x - mean||^2 = total_variance`` to 2."""
    return math.sqrt(2.0 / total_variance)


# --------------------------------------------------------------------------------------
# datasets


def moons(
    n: int,
    *,
    generator: torch.Generator | None = None,
    noise: float = 0.1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Two interleaved half-moons.

    Raw construction: pick a moon with probability 1/2 each and
    $\theta \sim U(0, \pi)$; the upper moon is $(\cos\theta, \sin\theta)$, the
    lower one $(1 - \cos\theta, \tfrac12 - \sin\theta)$; add
    $\mathcal N(0, \mathrm{noise}^2 I)$. The raw mean is $(\tfrac12, \tfrac14)$
    and $\mathbb E\|x - \mu\|^2 = \tfrac{21}{16} - \tfrac1\pi + 2\,\mathrm{noise}^2$;
    the output is centred and scaled so that $\mathbb E\|x\|^2 = 2$. At the default
    ``noise = 0.1`` the per-coordinate standard deviations are about ``(1.22, 0.71)``.

    **Arguments:**

    - `n`: number of samples (positive int).
    - `generator`: source of randomness; its device is where the sampling happens.
    - `noise`: standard deviation of the Gaussian noise, in raw units (>= 0).
    - `dtype`, `device`: of the result (default: `torch.get_default_dtype()`, the
      generator's device).

    **Returns:** a tensor of shape `(n, 2)`.
    """
    n = check_int("n", n, 1)
    noise = check_real("noise", noise, low=0.0)
    ctx = _Ctx(generator, dtype, device)
    lower = ctx.randint(2, n).bool()
    theta = math.pi * ctx.rand(n)
    c, s = torch.cos(theta), torch.sin(theta)
    x = torch.stack([torch.where(lower, 1.0 - c, c), torch.where(lower, 0.5 - s, s)], dim=-1)
    x = x + noise * ctx.randn(n, 2)
    total = 21.0 / 16.0 - 1.0 / math.pi + 2.0 * noise**2
    return ctx.finish(x, center=(0.5, 0.25), scale=_scale_for(total))


_SWISS_A = 1.5 * math.pi
_SWISS_B = 4.5 * math.pi


def swiss_roll(
    n: int,
    *,
    generator: torch.Generator | None = None,
    noise: float = 0.5,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""A two-dimensional swiss roll (spiral).

    Raw construction: $\theta \sim U(a, b)$ with $a = 1.5\pi$, $b = 4.5\pi$
    (one and a half turns), point $\theta(\cos\theta, \sin\theta)$ plus
    $\mathcal N(0, \mathrm{noise}^2 I)$; the turns are $2\pi \approx 6.3$ raw
    units apart. The raw mean $\mu = \big(\mathbb E[\theta\cos\theta],
    \mathbb E[\theta\sin\theta]\big) = (2, \tfrac{2}{3\pi})$
    and $\mathbb E\|x - \mu\|^2 = \tfrac{a^2 + ab + b^2}{3} - \|\mu\|^2 + 2\,\mathrm{noise}^2$
    are exact; the output is centred and scaled so that $\mathbb E\|x\|^2 = 2$. At the
    default ``noise = 0.5`` the per-coordinate standard deviations are about ``(0.98, 1.02)``.

    **Arguments:**

    - `n`: number of samples (positive int).
    - `generator`: source of randomness; its device is where the sampling happens.
    - `noise`: standard deviation of the Gaussian noise, in raw units (>= 0).
    - `dtype`, `device`: of the result (default: `torch.get_default_dtype()`, the
      generator's device).

    **Returns:** a tensor of shape `(n, 2)`.
    """
    n = check_int("n", n, 1)
    noise = check_real("noise", noise, low=0.0)
    ctx = _Ctx(generator, dtype, device)
    a, b = _SWISS_A, _SWISS_B
    theta = a + (b - a) * ctx.rand(n)
    x = theta[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
    x = x + noise * ctx.randn(n, 2)
    # E[t cos t] and E[t sin t] for t ~ U(a, b), from the antiderivatives.
    mx = (b * math.sin(b) + math.cos(b) - a * math.sin(a) - math.cos(a)) / (b - a)
    my = (math.sin(b) - b * math.cos(b) - math.sin(a) + a * math.cos(a)) / (b - a)
    second = (a * a + a * b + b * b) / 3.0
    total = second - mx * mx - my * my + 2.0 * noise**2
    return ctx.finish(x, center=(mx, my), scale=_scale_for(total))


def checkerboard(
    n: int,
    *,
    generator: torch.Generator | None = None,
    size: int = 4,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Uniform density on the dark cells of a ``size`` x ``size`` checkerboard.

    Raw construction: the board is $[-\mathrm{size}/2, \mathrm{size}/2]^2$ cut into unit
    cells; cell (column $c$, row $r$), counted from the lower-left corner, is
    occupied when $c + r$ is even (half of the cells). Both marginals are uniform on
    $[-\mathrm{size}/2, \mathrm{size}/2]$, so the scale $\sqrt{12}/\mathrm{size}$
    maps the board to $[-\sqrt3, \sqrt3]^2$: mean 0 and standard deviation exactly 1 per
    coordinate, for every ``size``.

    **Arguments:**

    - `n`: number of samples (positive int).
    - `generator`: source of randomness; its device is where the sampling happens.
    - `size`: cells per side (an even int >= 2; even so that every row and column holds the
      same number of occupied cells).
    - `dtype`, `device`: of the result (default: `torch.get_default_dtype()`, the
      generator's device).

    **Returns:** a tensor of shape `(n, 2)`.
    """
    n = check_int("n", n, 1)
    size = check_int("size", size, 2)
    if size % 2:
        raise ValueError(f"size must be an even int >= 2, got {size}")
    ctx = _Ctx(generator, dtype, device)
    col = ctx.randint(size, n)
    row = 2 * ctx.randint(size // 2, n) + col % 2
    cells = torch.stack([col, row], dim=-1).to(ctx.work)
    x = cells + ctx.rand(n, 2)
    half = size / 2.0
    return ctx.finish(x, center=(half, half), scale=math.sqrt(12.0) / size)


def eight_gaussians_params(
    radius: float = 8.0 / math.sqrt(33.0), std: float = 1.0 / math.sqrt(33.0)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Exact parameters of the :func:`eight_gaussians` mixture.

    Eight equally weighted isotropic Gaussians $\mathcal N(\mu_k, \mathrm{std}^2 I)$
    with means $\mu_k = \mathrm{radius}\,(\cos\tfrac{2\pi k}{8}, \sin\tfrac{2\pi k}{8})$,
    $k = 0, \dots, 7$. ``radius`` and ``std`` are in output units (no rescaling). The
    mixture has mean 0 and covariance $(\mathrm{radius}^2/2 + \mathrm{std}^2)\, I$; the
    defaults $\mathrm{radius} = 8/\sqrt{33} \approx 1.393$,
    $\mathrm{std} = 1/\sqrt{33} \approx 0.174$ keep FFJORD's ratio radius/std = 8 and
    give $\mathbb E\|x\|^2 = 2$ (standard deviation 1 per coordinate).

    **Arguments:**

    - `radius`: distance of each mean from the origin (>= 0).
    - `std`: standard deviation of each component (> 0).

    **Returns:** `(weights, means, covs)`, float64 CPU tensors of shapes `(8,)`, `(8, 2)`
    and `(8, 2, 2)`, ready for `scoresde.analytic.GaussianMixture`.
    """
    radius = check_real("radius", radius, low=0.0)
    std = check_positive("std", std)
    angles = torch.arange(8, dtype=torch.float64) * (2.0 * math.pi / 8.0)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    weights = torch.full((8,), 1.0 / 8.0, dtype=torch.float64)
    covs = (std**2) * torch.eye(2, dtype=torch.float64).expand(8, 2, 2).clone()
    return weights, means, covs


def eight_gaussians(
    n: int,
    *,
    generator: torch.Generator | None = None,
    radius: float = 8.0 / math.sqrt(33.0),
    std: float = 1.0 / math.sqrt(33.0),
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Samples from the eight-Gaussian mixture of :func:`eight_gaussians_params`.

    A component $k$ is drawn with the mixture weights and the sample is
    $\mu_k + L_k z$, $z \sim \mathcal N(0, I)$, $L_k L_k^\top = \Sigma_k$,
    with exactly the tensors returned by ``eight_gaussians_params(radius, std)`` — so the
    exact oracle ``GaussianMixture(*eight_gaussians_params(radius, std))`` describes these
    samples. Parameters are in output units; the defaults give mean 0 and standard
    deviation 1 per coordinate.

    **Arguments:**

    - `n`: number of samples (positive int).
    - `generator`: source of randomness; its device is where the sampling happens.
    - `radius`, `std`: see :func:`eight_gaussians_params`.
    - `dtype`, `device`: of the result (default: `torch.get_default_dtype()`, the
      generator's device).

    **Returns:** a tensor of shape `(n, 2)`.
    """
    n = check_int("n", n, 1)
    weights, means, covs = eight_gaussians_params(radius=radius, std=std)
    ctx = _Ctx(generator, dtype, device)
    weights, means, covs = (p.to(device=ctx.device, dtype=ctx.work) for p in (weights, means, covs))
    chol = torch.linalg.cholesky(covs)
    k = torch.multinomial(weights, n, replacement=True, generator=ctx.generator)
    z = ctx.randn(n, 2)
    x = means[k] + (chol[k] @ z[:, :, None]).squeeze(-1)
    return ctx.finish(x)


def rings(
    n: int,
    *,
    generator: torch.Generator | None = None,
    n_rings: int = 4,
    noise: float = 0.1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Concentric noisy circles.

    Raw construction: a ring $k \in \{1, \dots, K\}$ (``K = n_rings``) is picked
    uniformly, $\theta \sim U(0, 2\pi)$, the point is $k(\cos\theta, \sin\theta)$
    plus $\mathcal N(0, \mathrm{noise}^2 I)$; rings are one raw unit apart. The mean is 0
    and $\mathbb E\|x\|^2 = \tfrac{(K+1)(2K+1)}{6} + 2\,\mathrm{noise}^2$; the output is
    scaled so that $\mathbb E\|x\|^2 = 2$ (standard deviation 1 per coordinate by
    rotational symmetry; at the defaults the radii are about 0.52, 1.03, 1.55, 2.06).

    **Arguments:**

    - `n`: number of samples (positive int).
    - `generator`: source of randomness; its device is where the sampling happens.
    - `n_rings`: number of circles (int >= 1).
    - `noise`: standard deviation of the Gaussian noise, in raw units (>= 0).
    - `dtype`, `device`: of the result (default: `torch.get_default_dtype()`, the
      generator's device).

    **Returns:** a tensor of shape `(n, 2)`.
    """
    n = check_int("n", n, 1)
    n_rings = check_int("n_rings", n_rings, 1)
    noise = check_real("noise", noise, low=0.0)
    ctx = _Ctx(generator, dtype, device)
    radius = (ctx.randint(n_rings, n) + 1).to(ctx.work)
    theta = 2.0 * math.pi * ctx.rand(n)
    x = radius[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
    x = x + noise * ctx.randn(n, 2)
    total = (n_rings + 1) * (2 * n_rings + 1) / 6.0 + 2.0 * noise**2
    return ctx.finish(x, scale=_scale_for(total))


def pinwheel(
    n: int,
    *,
    generator: torch.Generator | None = None,
    n_arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""A pinwheel of ``n_arms`` curved arms.

    Raw construction: an arm $k$ is picked uniformly; a point
    $f = (1 + \mathrm{radial\_std}\, z_1, \mathrm{tangential\_std}\, z_2)$ with
    $z \sim \mathcal N(0, I)$ is rotated by the angle
    $2\pi k / K + \mathrm{rate}\, e^{f_1}$ (so arms curl outwards). Rotations keep
    $\|f\|$, so $\mathbb E\|x\|^2 = 1 + \mathrm{radial\_std}^2 +
    \mathrm{tangential\_std}^2$; the mean is 0 because the arm angles are equally spaced
    (``n_arms >= 2``). The output is scaled so that $\mathbb E\|x\|^2 = 2$; at the
    defaults both coordinates have standard deviation 1 (the five-fold symmetry makes the
    covariance isotropic).

    **Arguments:**

    - `n`: number of samples (positive int).
    - `generator`: source of randomness; its device is where the sampling happens.
    - `n_arms`: number of arms (int >= 2).
    - `radial_std`, `tangential_std`: spread along and across an arm, raw units (>= 0).
    - `rate`: how strongly the arms curl (>= 0).
    - `dtype`, `device`: of the result (default: `torch.get_default_dtype()`, the
      generator's device).

    **Returns:** a tensor of shape `(n, 2)`.
    """
    n = check_int("n", n, 1)
    n_arms = check_int("n_arms", n_arms, 2)
    radial_std = check_real("radial_std", radial_std, low=0.0)
    tangential_std = check_real("tangential_std", tangential_std, low=0.0)
    rate = check_real("rate", rate, low=0.0)
    ctx = _Ctx(generator, dtype, device)
    arm = ctx.randint(n_arms, n).to(ctx.work)
    z = ctx.randn(n, 2)
    f0 = 1.0 + radial_std * z[:, 0]
    f1 = tangential_std * z[:, 1]
    angle = arm * (2.0 * math.pi / n_arms) + rate * torch.exp(f0)
    c, s = torch.cos(angle), torch.sin(angle)
    x = torch.stack([c * f0 - s * f1, s * f0 + c * f1], dim=-1)
    total = 1.0 + radial_std**2 + tangential_std**2
    return ctx.finish(x, scale=_scale_for(total))


# --------------------------------------------------------------------------------------
# registry

DATASETS: dict[str, Callable[..., torch.Tensor]] = {
    "moons": moons,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
    "eight_gaussians": eight_gaussians,
    "rings": rings,
    "pinwheel": pinwheel,
}
"""Every registered data set: name -> sampler `fn(n, *, generator, dtype, device, **params)`
returning `(n, *event_shape)`. A fixed image data set (e.g. `"digits"`) is an
[`ImageSource`][scoresde.data.images.ImageSource]: callable so, and with `.load(split)`
giving the [`ImageDataset`][scoresde.data.images.ImageDataset] with its quantization
([`load_dataset`][scoresde.data.images.load_dataset])."""

TOY_DATASETS: tuple[str, ...] = tuple(DATASETS)
"""Names of the built-in toy data sets (the registry `DATASETS` may hold more)."""


def register_dataset(name: str, fn: Callable[..., torch.Tensor] | None = None) -> Any:
    """Register a toy sampler `fn(n, *, generator=None, dtype=None, device=None, **params)`
    returning `(n, *event_shape)` under `name` (`register_dataset("mine", fn)` or as a
    decorator); [`sample_toy`][scoresde.data.toy.sample_toy] and the CLI's `--data` then
    know it. For a fixed image data set register an
    [`ImageSource`][scoresde.data.images.ImageSource] (it is such a callable, and
    [`load_dataset`][scoresde.data.images.load_dataset] gives its splits)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a data set name must be a non-empty string, got {name!r}")

    def add(f: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if not callable(f):
            raise TypeError(f"register_dataset needs a callable, got {f!r}")
        DATASETS[name] = f
        return f

    return add(fn) if fn is not None else add


def sample_toy(
    name: str,
    n: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **params: float,
) -> torch.Tensor:
    """Draw `n` samples from the toy dataset called `name`.

    **Arguments:**

    - `name`: one of :data:`TOY_DATASETS`.
    - `n`: number of samples (positive int).
    - `generator`: source of randomness; its device is where the sampling happens.
    - `dtype`, `device`: of the result (default: `torch.get_default_dtype()`, the
      generator's device).
    - `**params`: dataset parameters passed on to the dataset's function (e.g. `noise=0.2`).

    **Returns:** a tensor of shape `(n, *event_shape)`: `(n, 2)` for the built-in sets,
    centred with `E||x||^2 = 2` (see the module
    docstring).

    **Raises:** `ValueError` for an unknown name, a bad `n` or a bad parameter value;
    `TypeError` for a parameter the dataset does not take.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a toy dataset name (a string), got {type(name).__name__}")
    if name not in DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name](n, generator=generator, dtype=dtype, device=device, **params)
