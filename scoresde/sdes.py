r"""Forward SDEs with linear drift: VP (linear and cosine), sub-VP and VE.

Every SDE here has the form (Song et al. 2021, "Score-based generative modeling through
stochastic differential equations", ICLR)

$$
dx = f(t)\,x\,dt + g(t)\,dw, \qquad t \in [0, T],\ T = 1,
$$

so that the perturbation kernel is Gaussian,
$x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$, $\varepsilon \sim N(0, I)$,
with $f = d\log\alpha/dt$ and $g^2 = d\sigma^2/dt - 2 f \sigma^2$.
The log-SNR is $\lambda(t) = \log(\alpha^2/\sigma^2)$, decreasing in `t`.

The reverse-time SDE and the probability-flow ODE are derived from these coefficients
once, in [`scoresde.dynamics`][scoresde.dynamics]; every sampler and the likelihood use them.

Times `t` are Python floats, 0-d tensors or tensors of shape `(B,)`; data `x` has
shape `(B, *event_shape)`. Coefficients come back with the shape of `t`.

**Extending.** A new SDE subclasses `SDE`, implements the four coefficient hooks
`_f`, `_g2`, `_log_alpha`, `_sigma` (called only by this base class) and `config()`, and
is registered with [`register_sde`][scoresde.sdes.register_sde] so that checkpoints and the
command line can rebuild it by name (docs/extending.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F

from .validation import as_time, bcast, check_batch
from .validation import check_positive as _check_positive

if TYPE_CHECKING:
    from .schedules import DiscreteSchedule

Tensor = torch.Tensor

__all__ = ["SDE", "VPSDE", "CosineVPSDE", "ScheduleVPSDE", "SubVPSDE", "VESDE",
           "Coefficients", "SDES", "register_sde", "get_sde", "sde_from_config"]


class Coefficients(NamedTuple):
    r"""The coefficients of an SDE at times `t` (each with the shape of `t`):
    $\alpha(t)$, $\sigma(t)$, $f(t)$ and $g(t)^2$ of
    $dx = f x\,dt + g\,dw$, $x_t = \alpha x_0 + \sigma\varepsilon$."""

    alpha: Tensor
    sigma: Tensor
    f: Tensor
    g2: Tensor


SDES: dict[str, type[SDE]] = {}
"""Every registered SDE class, by name (`"vp"`, `"subvp"`, `"ve"`, `"vp_cosine"`,
`"vp_schedule"`, and a user's)."""

S = TypeVar("S", bound=type)


def register_sde(name: str, cls: type[SDE] | None = None) -> Any:
    """Register an SDE class under `name`: `register_sde("mine", MySDE)` or as a class
    decorator `@register_sde("mine")`. Checkpoints store `config()`, whose `"name"` may be
    this name or the class name; both resolve. Re-registering a name replaces it."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"an SDE name must be a non-empty string, got {name!r}")

    def add(c: S) -> S:
        if not (isinstance(c, type) and issubclass(c, SDE)):
            raise TypeError(f"register_sde needs an SDE subclass, got {c!r}")
        SDES[name] = c
        return c

    return add(cls) if cls is not None else add


def _resolve(name: object) -> type[SDE] | None:
    if not isinstance(name, str):
        return None
    if name in SDES:
        return SDES[name]
    return next((c for c in SDES.values() if c.__name__ == name), None)


def get_sde(name: str, **kwargs: Any) -> SDE:
    """An instance of the SDE registered as `name` (or with that class name), built with
    `kwargs`; `ValueError` listing the registered names otherwise."""
    cls = _resolve(name)
    if cls is None:
        raise ValueError(f"unknown SDE {name!r}; registered: {sorted(SDES)}")
    return cls(**kwargs)


class SDE(ABC):
    r"""Base class of a forward SDE $dx = f(t) x\,dt + g(t)\,dw$ on `[0, T]`.

    Subclasses implement the unchecked coefficient functions `_f`, `_g2`,
    `_log_alpha`, `_sigma` (and, where a closed form exists, `_log_snr` and
    `_log_snr_inverse`); the public methods check their inputs once and call them.

    **Attributes:**

    - `T`: the final time, 1.
    - `train_eps`: smallest training time, $t \sim U(\mathtt{train\_eps}, T)$.
    - `sample_eps`: default time at which sampling stops.
    - `prior_std`: standard deviation of the Gaussian prior $N(0, \mathtt{prior\_std}^2 I)$.
    - `variance_preserving`: `True` when $\alpha^2 + \sigma^2 = 1$.
    """

    T: float = 1.0
    train_eps: float = 1e-5
    sample_eps: float = 1e-3
    prior_std: float = 1.0
    variance_preserving: bool = False

    # ----- coefficient functions (unchecked, t is a tensor) -----------------------------
    @abstractmethod
    def _f(self, t: Tensor) -> Tensor:
        """Drift coefficient `f(t)` with `drift = f(t) x`."""

    @abstractmethod
    def _g2(self, t: Tensor) -> Tensor:
        """Squared diffusion `g(t)^2`."""

    @abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor:
        """`log alpha(t)`."""

    @abstractmethod
    def _sigma(self, t: Tensor) -> Tensor:
        """`sigma(t)`."""

    def _log_snr(self, t: Tensor) -> Tensor:
        return 2.0 * self._log_alpha(t) - 2.0 * torch.log(self._sigma(t))

    def _log_snr_inverse(self, lam: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form inverse log-SNR")

    @property
    def breakpoints(self) -> tuple[float, ...]:
        """Times in $(0, T)$ where the coefficients are not smooth (adaptive ODE solvers step
        exactly onto them instead of straddling them); none by default."""
        return ()

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """A JSON-able description `{"name": ..., **kwargs}`; see
        [`sde_from_config`][scoresde.sdes.sde_from_config]."""

    @classmethod
    def from_config(cls, kwargs: dict[str, Any]) -> SDE:
        """Rebuild from `config()` without its `"name"` (default: `cls(**kwargs)`)."""
        return cls(**kwargs)

    # ----- the fast path -----------------------------------------------------------------
    def coefficients(self, t: Tensor) -> Coefficients:
        r"""$(\alpha, \sigma, f, g^2)$ at `t`, **unchecked**: the fast path for solvers and
        the likelihood, which check their times once per solve.

        `t` must be a floating tensor of shape `()` or `(B,)` in `[0, T]` (not verified);
        the results have its shape, dtype and device. The checked public methods
        (`alpha`, `sigma`, `drift`, `diffusion`, ...) give the same values.
        """
        return Coefficients(torch.exp(self._log_alpha(t)), self._sigma(t), self._f(t),
                            self._g2(t))

    # ----- public, checked -----------------------------------------------------------
    def _t(self, t: float | Tensor, x: Tensor | None = None) -> Tensor:
        if x is not None:
            check_batch(x)
        return as_time(t, None if x is None else x.shape[0], x, T=self.T)

    def drift(self, x: Tensor, t: float | Tensor) -> Tensor:
        r"""Forward drift $f(x, t) = f(t)\,x$, same shape as `x`."""
        t = self._t(t, x)
        return bcast(self._f(t), x) * x

    def diffusion(self, t: float | Tensor) -> Tensor:
        r"""Diffusion coefficient $g(t)$, shape of `t`."""
        return torch.sqrt(self._g2(self._t(t)))

    def alpha(self, t: float | Tensor) -> Tensor:
        r"""Mean scale $\alpha(t)$ of $x_t = \alpha x_0 + \sigma \varepsilon$."""
        return torch.exp(self._log_alpha(self._t(t)))

    def sigma(self, t: float | Tensor) -> Tensor:
        r"""Standard deviation $\sigma(t)$ of the perturbation kernel."""
        return self._sigma(self._t(t))

    def log_snr(self, t: float | Tensor) -> Tensor:
        r"""Log signal-to-noise ratio $\lambda(t) = \log(\alpha^2/\sigma^2)$."""
        return self._log_snr(self._t(t))

    def log_snr_inverse(self, lam: float | Tensor) -> Tensor:
        r"""The time `t` with $\lambda(t) = \text{lam}$ (closed form).

        `lam` outside $[\lambda(T), \lambda(0)]$ maps outside `[0, T]`.
        """
        if not isinstance(lam, Tensor):
            lam = torch.tensor(float(lam), dtype=torch.get_default_dtype())
        return self._log_snr_inverse(lam)

    def marginal_prob(self, x0: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        r"""Mean and standard deviation of $p_{0t}(x_t \mid x_0)$.

        **Returns:** `(mean, std)` with `mean = alpha(t) * x0` (shape of `x0`) and
        `std = sigma(t)` (shape of `t`).
        """
        t = self._t(t, x0)
        return bcast(torch.exp(self._log_alpha(t)), x0) * x0, self._sigma(t)

    def perturb(self, x0: Tensor, t: float | Tensor, noise: Tensor) -> Tensor:
        r"""$x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$ for given noise `eps`."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        t = self._t(t, x0)
        return bcast(torch.exp(self._log_alpha(t)), x0) * x0 + bcast(self._sigma(t), x0) * noise

    def prior_sample(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None
                     = None, *, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> Tensor:
        r"""Draw $x_T \sim N(0, \mathtt{prior\_std}^2 I)$ of the given `shape`."""
        if generator is not None and device is None:
            device = generator.device
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return z * self.prior_std

    def prior_logp(self, z: Tensor) -> Tensor:
        r"""Log-density of the prior, per sample: shape `(B,)`, in nats.

        $\log N(z; 0, s^2 I) = -\tfrac{D}{2}\log(2\pi s^2) - \|z\|^2/(2 s^2)$.
        """
        check_batch(z, "z")
        d = z[0].numel()
        s2 = self.prior_std ** 2
        sq = z.reshape(z.shape[0], -1).pow(2).sum(dim=1)
        return -0.5 * d * math.log(2 * math.pi * s2) - sq / (2 * s2)

    def discretize(self, N: int) -> DiscreteSchedule:
        r"""The discrete-time (DDPM) schedule with `N` steps; see subclasses."""
        raise NotImplementedError(
            f"{type(self).__name__} has no DDPM discretisation: it is defined for "
            "variance-preserving SDEs (VPSDE, VPSDE.cosine(), VPSDE.from_schedule())")

    def __repr__(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({kw})"


class _LinearBeta:
    r"""Linear $\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})$ and its
    integral $B(t) = \int_0^t \beta = \beta_{min} t + \tfrac12 t^2(\beta_{max}-\beta_{min})$."""

    beta_min: float
    beta_max: float

    def _init_beta(self, beta_min: float, beta_max: float) -> None:
        self.beta_min = _check_positive("beta_min", beta_min)
        self.beta_max = _check_positive("beta_max", beta_max)
        if self.beta_min >= self.beta_max:
            raise ValueError(
                f"beta_min must be < beta_max, got beta_min={beta_min}, beta_max={beta_max}")

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def beta_integral(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def beta_integral_inverse(self, b: Tensor) -> Tensor:
        # root of 0.5*d*t^2 + bmin*t - b = 0, written without cancellation
        d = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + torch.sqrt(self.beta_min ** 2 + 2.0 * d * b))


@register_sde("vp")
class VPSDE(_LinearBeta, SDE):
    r"""Variance-preserving SDE (Song et al. 2021; DDPM's continuous limit).

    $$
    dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)}\,dw,
    $$

    with linear $\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})$ (defaults 0.1
    and 20), $B(t) = \int_0^t\beta$, $\alpha = e^{-B/2}$,
    $\sigma = \sqrt{1 - e^{-B}}$, $\lambda = -\log(e^{B} - 1)$.
    Prior $N(0, I)$; sampling stops at `1e-3`.

    Subclasses ([`CosineVPSDE`][scoresde.sdes.CosineVPSDE],
    [`ScheduleVPSDE`][scoresde.sdes.ScheduleVPSDE]) change only $\beta$, $B$ and $B^{-1}$.
    """

    variance_preserving = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self._init_beta(beta_min, beta_max)

    @classmethod
    def cosine(cls, s: float = 0.008, beta_clip: float = 20.0) -> CosineVPSDE:
        """The continuous cosine schedule of Nichol & Dhariwal (2021); see
        [`CosineVPSDE`][scoresde.sdes.CosineVPSDE]."""
        return CosineVPSDE(s=s, beta_clip=beta_clip)

    @classmethod
    def from_schedule(cls, schedule: DiscreteSchedule) -> ScheduleVPSDE:
        """The VP-SDE whose DDPM discretisation is exactly `schedule`; see
        [`ScheduleVPSDE`][scoresde.sdes.ScheduleVPSDE]."""
        return ScheduleVPSDE(schedule)

    def _f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def _g2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta_integral(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.clamp(-torch.expm1(-self.beta_integral(t)), min=0.0))

    def _log_snr(self, t: Tensor) -> Tensor:
        return -torch.log(torch.expm1(self.beta_integral(t)))

    def _log_snr_inverse(self, lam: Tensor) -> Tensor:
        # alpha^2/sigma^2 = 1/(e^B - 1)  =>  B = log(1 + e^{-lam}) = softplus(-lam)
        return self.beta_integral_inverse(F.softplus(-lam))

    def discretize(self, N: int) -> DiscreteSchedule:
        r"""The DDPM schedule with `N` steps; grid index `i` is continuous time $t_i = (i+1)/N$.

        - Linear $\beta$ (this class): DDPM's betas (Ho et al. 2020),
          $\beta_i = \beta_{min}/N + \tfrac{i}{N-1}(\beta_{max}-\beta_{min})/N$, $i = 0..N-1$;
          for `N = 1000` this is `linspace(1e-4, 0.02, 1000)` (to 1e-17), and
          $\bar\alpha_i = \alpha(t_i)^2\,(1 + O(1/N))$.
        - Any other $\beta$ (a subclass overriding `beta_integral`, e.g. the cosine schedule):
          $\bar\alpha_i = \alpha(t_i)^2$ exactly, i.e.
          $\beta_i = 1 - e^{-(B(t_i) - B(t_{i-1}))}$ (Nichol & Dhariwal's rule for the cosine).
        """
        from .schedules import DiscreteSchedule

        N = DiscreteSchedule.check_N(N)
        if type(self).beta_integral is not _LinearBeta.beta_integral:
            t = torch.arange(N + 1, dtype=torch.float64) / N
            b = self.beta_integral(t)
            return DiscreteSchedule(-torch.expm1(-(b[1:] - b[:-1])))
        i = torch.arange(N, dtype=torch.float64)
        frac = i / (N - 1) if N > 1 else torch.zeros_like(i)
        betas = self.beta_min / N + frac * (self.beta_max - self.beta_min) / N
        if self.beta_max / N >= 1.0:
            raise ValueError(f"N={N} is too few steps for DDPM's linear betas: beta_max/N = "
                             f"{self.beta_max / N:.3g} must be < 1; use N > {self.beta_max:g}")
        return DiscreteSchedule(betas)

    def config(self) -> dict[str, Any]:
        return {"name": "VPSDE", "beta_min": self.beta_min, "beta_max": self.beta_max}


@register_sde("vp_cosine")
class CosineVPSDE(VPSDE):
    r"""VP-SDE with the cosine schedule of Nichol & Dhariwal (2021), continuous form.

    $\bar\alpha(t) = \cos^2\phi(t) / \cos^2\phi(0)$, $\phi(t) = \frac{t+s}{1+s}\frac\pi2$,
    so $B(t) = -\log\bar\alpha(t)$ and $\beta(t) = B'(t) = \frac{\pi}{1+s}\tan\phi(t)$.
    That $\beta$ diverges at `t = 1`; like the discrete schedule's clipping of
    $\beta_i$ at 0.999, it is clipped: $\beta(t) = \beta_{clip}$ for
    $t \ge t_c$ (where $\beta(t_c) = \beta_{clip}$), and $B$ is continued
    linearly, so drift, diffusion and marginals stay exactly consistent. The default
    `beta_clip = 20` equals the linear VP's $\beta_{max}$ (same stiffness);
    then $t_c \approx 0.90$ and $\alpha(1)^2 \approx 3.2\cdot10^{-3}$.
    """

    def __init__(self, s: float = 0.008, beta_clip: float = 20.0) -> None:
        self.s = _check_positive("s", s)
        self.beta_clip = _check_positive("beta_clip", beta_clip)
        self._c = math.pi / (2 * (1 + self.s))
        self._log_cos0 = math.log(math.cos(self.s * self._c))
        self._tan0 = math.tan(self.s * self._c)
        phi_c = math.atan(self.beta_clip / (2 * self._c))
        self.t_clip = min(phi_c / self._c - self.s, self.T)
        if self.t_clip <= 0:
            raise ValueError(f"beta_clip={beta_clip} is below beta(0) of the cosine schedule")
        self._b_clip = -2.0 * (math.log(math.cos((self.t_clip + self.s) * self._c))
                               - self._log_cos0)
        # for repr/config compatibility with VPSDE attributes
        self.beta_min = float(2 * self._c * math.tan(self.s * self._c))
        self.beta_max = self.beta_clip

    def beta(self, t: Tensor) -> Tensor:
        tc = torch.clamp(t, max=self.t_clip)
        return torch.where(t < self.t_clip, 2 * self._c * torch.tan((tc + self.s) * self._c),
                           torch.full_like(t, self.beta_clip))

    def beta_integral(self, t: Tensor) -> Tensor:
        r"""$B(t) = -2\log\frac{\cos(a + d)}{\cos a}$ with $a = s c$, $d = t c$, written as
        $-2\,\mathrm{log1p}(-2\sin^2(d/2) - \tan(a)\sin d)$: no cancellation as
        $t \to 0$ (the difference of two logs lost all digits of $\sigma(t)$ in float32
        below $t \approx 10^{-6}$)."""
        tc = torch.clamp(t, max=self.t_clip)
        d = tc * self._c
        b = -2.0 * torch.log1p(-2.0 * torch.sin(0.5 * d) ** 2 - self._tan0 * torch.sin(d))
        return b.clamp(min=0.0) + self.beta_clip * torch.clamp(t - self.t_clip, min=0.0)

    def beta_integral_inverse(self, b: Tensor) -> Tensor:
        r"""$t = B^{-1}(b)$: with $r = e^{-b/2} = \cos(a + d)/\cos a$ ($a = s c$,
        $d = t c$), $S = \sin(a + d) = \sqrt{\sin^2 a + \cos^2 a\,(1 - r^2)}$ and
        $\tan d = \cos a\,(1 - r^2) / ((S + r\sin a)(r\cos^2 a + S\sin a))$, with
        $1 - r^2 = -\mathrm{expm1}(-b)$: no cancellation as $b \to 0$."""
        bc = torch.clamp(b, max=self._b_clip)
        cos_a, sin_a = math.cos(self.s * self._c), math.sin(self.s * self._c)
        r = torch.exp(-0.5 * bc)
        one_minus_r2 = -torch.expm1(-bc)
        big_s = torch.sqrt(sin_a ** 2 + cos_a ** 2 * one_minus_r2)
        d = torch.atan2(cos_a * one_minus_r2 / (big_s + r * sin_a), r * cos_a ** 2 + big_s * sin_a)
        return d / self._c + torch.clamp(b - self._b_clip, min=0.0) / self.beta_clip

    @property
    def breakpoints(self) -> tuple[float, ...]:
        """The clip time, where $\beta$ has a kink (a step straddling it loses the
        integrator's order)."""
        return (self.t_clip,) if self.t_clip < self.T else ()

    def config(self) -> dict[str, Any]:
        return {"name": "CosineVPSDE", "s": self.s, "beta_clip": self.beta_clip}


@register_sde("vp_schedule")
class ScheduleVPSDE(VPSDE):
    r"""The VP-SDE whose discretisation is exactly a given
    [`DiscreteSchedule`][scoresde.schedules.DiscreteSchedule], with a continuous $\beta$.

    $B(t) = \int_0^t\beta$ is a monotone piecewise-cubic Hermite ($C^1$) interpolant of
    the knots $B(k/N) = y_k$, $y_0 = 0$, $y_{k+1} = -\log\bar\alpha_k$ ($k = 0..N-1$),
    so $\alpha(t_i)^2 = e^{-B(t_i)} = \bar\alpha_i$ at the grid times $t_i = (i+1)/N$
    (to the rounding of `exp`), `discretize(N)` returns the schedule itself, and a network
    trained with [`ddpm_loss`][scoresde.losses.ddpm_loss] on that schedule is exactly a
    continuous-time model. On the cell $[k/N, (k+1)/N]$, with $w = Nt - k \in [0, 1]$,
    $\Delta_k = y_{k+1} - y_k$ and knot slopes $d_k \approx B'(k/N)$, $m_k = d_k/N$:

    $$
    B(t) = y_k + m_k w + (3\Delta_k - 2m_k - m_{k+1})\,w^2 + (m_k + m_{k+1} - 2\Delta_k)\,w^3,
    \qquad \beta(t) = B'(t) = N\,\frac{dB}{dw},
    $$

    so $\beta$ is continuous, $\beta(k/N) = d_k$. The slopes are fourth-order finite
    differences of the knots, written with the cell rates $\delta_k = N\Delta_k$ (interior:
    $d_k = [7(\delta_{k-1} + \delta_k) - \delta_{k-2} - \delta_{k+1}]/12$; one-sided
    five-point formulas at the two knots next to each end; second order for $N < 4$), then
    limited to $0 < d_k \le 3\min(\delta_{k-1}, \delta_k)$ (Fritsch & Carlson 1980;
    Hyman 1983), which makes every cell's cubic monotone, so $\beta \ge 0$ (a slope
    $\le 0$ becomes the harmonic mean $2\delta_{k-1}\delta_k/(\delta_{k-1}+\delta_k)$ of
    PCHIP, or $\delta_0$, $\delta_{N-1}$ at the ends, so $\beta > 0$ at the knots). On a smooth
    schedule (DDPM's linear one) the limiter is inactive and $\beta$ differs from a smooth
    function by $O(N^{-3})$ only, which an adaptive ODE solver does not see; a
    piecewise-linear $B$ (piecewise-constant $\beta$, the previous embedding) stalled
    adaptive log-likelihoods at a 2-4e-3 nat error floor (docs/math.md). Beyond `[0, 1]`,
    $B$ continues linearly. `beta_min` is $\beta(0)$, `beta_max` the largest $\beta$ on
    `[0, 1]`.
    """

    #: most iterations of `beta_integral_inverse` (bisection alone would need 53 in float64)
    _MAX_NEWTON = 64

    def __init__(self, schedule: DiscreteSchedule) -> None:
        self.schedule = schedule
        self.N = N = schedule.N
        y = torch.cat([torch.zeros(1, dtype=torch.float64),
                       -torch.log(schedule.alphas_cumprod)])        # B at k/N, k = 0..N
        dy = y[1:] - y[:-1]                                         # Delta_k > 0
        rate = N * dy                                               # cell rates delta_k
        # limiter: 0 < d_k <= 3 min(delta_{k-1}, delta_k) makes every cell's cubic monotone;
        # a slope <= 0 (rough or coarse data) is replaced by PCHIP's harmonic mean (an end
        # slope by the end cell's rate), so beta stays positive at every knot
        lim = torch.cat([rate[:1], torch.minimum(rate[:-1], rate[1:]), rate[-1:]])
        safe = torch.cat([rate[:1], 2.0 * rate[:-1] * rate[1:] / (rate[:-1] + rate[1:]),
                          rate[-1:]])
        d = self._slopes(rate)
        d = torch.where(d > 0, torch.minimum(d, 3.0 * lim), safe)
        m0, m1 = d[:-1] / N, d[1:] / N
        c2, c3 = 3.0 * dy - 2.0 * m0 - m1, m0 + m1 - 2.0 * dy
        # one row per cell k: B = y_k + w (m_k + w (c2 + w c3)), dB/dw = m_k + w (2 c2 + 3 w c3),
        # y_{k+1}, and the slope B continues with beyond [0, 1]: m_0 on cell 0, m_N on cell N-1
        # (equal when N = 1); unused on the other cells
        ext = m1.clone()
        ext[0] = m0[0]
        self._coef64 = torch.stack([y[:-1], m0, c2, c3, 2.0 * c2, 3.0 * c3, y[1:], ext], dim=1)
        self._knots = y
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        self.beta_min = float(d[0])
        ws = (-c2 / (3.0 * c3)).nan_to_num(0.0, 0.0, 0.0).clamp(0.0, 1.0)  # vertex of dB/dw
        inner = m0 + ws * (2.0 * c2 + 3.0 * c3 * ws)
        self.beta_max = float(N * torch.maximum(torch.maximum(m0, m1), inner).max())

    @staticmethod
    def _slopes(rate: Tensor) -> Tensor:
        r"""Knot slopes $d_k \approx B'(k/N)$, $k = 0..N$, from the cell rates $\delta_k$:
        five-point (fourth-order) differences for $N \ge 4$, three-point below."""
        r, n = rate, rate.shape[0]
        if n == 1:
            return r.repeat(2)
        if n < 4:
            return torch.cat([1.5 * r[:1] - 0.5 * r[1:2], 0.5 * (r[:-1] + r[1:]),
                              1.5 * r[-1:] - 0.5 * r[-2:-1]])
        interior = (7.0 * (r[1:-2] + r[2:-1]) - r[:-3] - r[3:]) / 12.0      # k = 2..N-2
        ends = [(25 * r[0] - 23 * r[1] + 13 * r[2] - 3 * r[3]) / 12.0,      # k = 0
                (3 * r[0] + 13 * r[1] - 5 * r[2] + r[3]) / 12.0,            # k = 1
                (3 * r[-1] + 13 * r[-2] - 5 * r[-3] + r[-4]) / 12.0,        # k = N-1
                (25 * r[-1] - 23 * r[-2] + 13 * r[-3] - 3 * r[-4]) / 12.0]  # k = N
        return torch.cat([torch.stack(ends[:2]), interior, torch.stack(ends[2:])])

    def _tables(self, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = (self._coef64.to(dtype=like.dtype, device=like.device),
                                self._knots.to(dtype=like.dtype, device=like.device))
        return self._cache[key]

    def _rows(self, like: Tensor, k: Tensor) -> Tensor:
        c = self._tables(like)[0]
        return c.index_select(0, k.reshape(-1)).reshape(*k.shape, c.shape[1])

    def _cell(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The coefficient rows of the cells holding `t`, and `w = Nt - k`."""
        u = t * self.N
        k = torch.clamp(torch.floor(u), 0, self.N - 1)
        return self._rows(t, k.long()), u - k

    @staticmethod
    def _b(rows: Tensor, w: Tensor) -> Tensor:
        """$B$ at `w` on the cells of `rows`; linear beyond `[0, 1]`."""
        y0, m0, c2, c3, _, _, _, ext = rows.unbind(-1)
        wc = w.clamp(0.0, 1.0)
        return y0 + wc * (m0 + wc * (c2 + wc * c3)) + ext * (w - wc)

    @staticmethod
    def _db(rows: Tensor, w: Tensor) -> Tensor:
        """$dB/dw$ at `w` on the cells of `rows` (constant beyond `[0, 1]`)."""
        _, m0, _, _, c2x2, c3x3, _, _ = rows.unbind(-1)
        wc = w.clamp(0.0, 1.0)
        return m0 + wc * (c2x2 + wc * c3x3)

    def beta(self, t: Tensor) -> Tensor:
        return self.N * self._db(*self._cell(t))

    def beta_integral(self, t: Tensor) -> Tensor:
        return self._b(*self._cell(t))

    def beta_integral_inverse(self, b: Tensor) -> Tensor:
        r"""The `t` with $B(t) = b$: the cell by `searchsorted` on the knots, then Newton
        on the cell's monotone cubic, safeguarded by bisection of its bracket (initially
        $w \in [0, 1]$), until $|B(t) - b|$ is within 4 ulps
        of the cell's largest $B$ (or the bracket has closed); linear beyond the ends."""
        knots = self._tables(b)[1]
        k = torch.clamp(torch.searchsorted(knots, b.contiguous(), right=True) - 1, 0, self.N - 1)
        rows = self._rows(b, k)
        y0, y1, ext = rows[..., 0], rows[..., 6], rows[..., 7]
        w = ((b - y0) / (y1 - y0)).clamp(0.0, 1.0)            # the secant's guess
        lo, hi = torch.zeros_like(w), torch.ones_like(w)
        tiny = 4.0 * torch.finfo(w.dtype).eps
        for _ in range(self._MAX_NEWTON):
            f = self._b(rows, w) - b
            lo = torch.where(f < 0, w, lo)
            hi = torch.where(f > 0, w, hi)
            step = w - f / self._db(rows, w)
            new = torch.where(f == 0, w, torch.where((step >= lo) & (step <= hi), step,
                                                     0.5 * (lo + hi)))
            done = bool(((f.abs() <= tiny * y1) | (hi - lo <= tiny)).all())
            w = new
            if done:
                break
        # beyond the ends B is linear with slope ext (B(0) = y0 = 0 on cell 0, B(1) = y1)
        w = torch.where(b < y0, (b - y0) / ext, torch.where(b > y1, 1.0 + (b - y1) / ext, w))
        return (k + w) / self.N

    def discretize(self, N: int) -> DiscreteSchedule:
        """With `N` equal to the schedule's length this returns the schedule itself."""
        if N == self.N:
            return self.schedule
        return super().discretize(N)

    def config(self) -> dict[str, Any]:
        return {"name": "ScheduleVPSDE", "betas": self.schedule.betas.tolist()}

    @classmethod
    def from_config(cls, kwargs: dict[str, Any]) -> ScheduleVPSDE:
        from .schedules import DiscreteSchedule

        return cls(DiscreteSchedule(torch.tensor(kwargs["betas"], dtype=torch.float64)))


@register_sde("subvp")
class SubVPSDE(_LinearBeta, SDE):
    r"""Sub-VP SDE (Song et al. 2021), same drift as VP, smaller diffusion:

    $$
    dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)(1 - e^{-2B(t)})}\,dw,
    $$

    $\alpha = e^{-B/2}$, $\sigma = 1 - e^{-B}$ (so $\alpha^2+\sigma^2 \le 1$),
    $\lambda = -B - 2\log(1 - e^{-B})$. Prior $N(0, I)$.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self._init_beta(beta_min, beta_max)

    def _f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def _g2(self, t: Tensor) -> Tensor:
        return self.beta(t) * -torch.expm1(-2.0 * self.beta_integral(t))

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta_integral(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.beta_integral(t))

    def _log_snr(self, t: Tensor) -> Tensor:
        b = self.beta_integral(t)
        return -b - 2.0 * torch.log(-torch.expm1(-b))

    def _log_snr_inverse(self, lam: Tensor) -> Tensor:
        # u = e^{-B} solves e^lam (1-u)^2 = u; the root in (0, 1) gives
        # B = log(1 + e^{-lam} (1 + sqrt(1 + 4 e^{lam})) / 2), evaluated without overflow.
        c = torch.log(0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * torch.exp(torch.clamp(lam, max=80.0)))))
        b = torch.logaddexp(torch.zeros_like(lam), -lam + c)
        return self.beta_integral_inverse(b)

    def config(self) -> dict[str, Any]:
        return {"name": "SubVPSDE", "beta_min": self.beta_min, "beta_max": self.beta_max}


@register_sde("ve")
class VESDE(SDE):
    r"""Variance-exploding SDE (Song et al. 2021; SMLD's continuous limit).

    $$
    dx = \sigma(t)\sqrt{2\log(\sigma_{max}/\sigma_{min})}\,dw, \qquad
    \sigma(t) = \sigma_{min}(\sigma_{max}/\sigma_{min})^t,
    $$

    $f = 0$, $\alpha = 1$, $\lambda = -2\log\sigma(t)$. As in Song et al.,
    $\sigma(0) = \sigma_{min} > 0$: the marginal at `t` is exactly
    $p_{data} * N(0, \sigma(t)^2 I)$ when the SDE starts from
    $p_{data} * N(0, \sigma_{min}^2 I)$. Prior $N(0, \sigma_{max}^2 I)$;
    sampling stops at `1e-5`.
    """

    sample_eps = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        self.sigma_min = _check_positive("sigma_min", sigma_min)
        self.sigma_max = _check_positive("sigma_max", sigma_max)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.prior_std = self.sigma_max

    def _f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _g2(self, t: Tensor) -> Tensor:
        return self._sigma(t) ** 2 * (2.0 * self._log_ratio)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * (math.log(self.sigma_min) + t * self._log_ratio)

    def _log_snr_inverse(self, lam: Tensor) -> Tensor:
        return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio

    def config(self) -> dict[str, Any]:
        return {"name": "VESDE", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


def sde_from_config(cfg: dict[str, Any]) -> SDE:
    """Rebuild an SDE from [`SDE.config`][scoresde.sdes.SDE.config] (used by checkpoints):
    `cfg["name"]` is a registered name or the class name of a registered SDE."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ValueError(f"an SDE config is a dict with a 'name' key, got {cfg!r}")
    cls = _resolve(cfg["name"])
    if cls is None:
        raise ValueError(f"unknown SDE {cfg['name']!r} in the config; registered: "
                         f"{sorted(SDES)} (a user's SDE must be registered with "
                         "sd.register_sde before its checkpoint is loaded)")
    return cls.from_config({k: v for k, v in cfg.items() if k != "name"})
