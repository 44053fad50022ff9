r"""Ancestral sampling: DDPM's Algorithm 2 (Ho et al. 2020), generalised to any grid and SDE.

From $s = t_i$ to $t = t_{i+1} < s$, with $\hat x_0 = (x_s - \sigma_s\hat\varepsilon)/\alpha_s$
and $\Delta = \lambda_s - \lambda_t < 0$, sample the Gaussian posterior
$q(x_t \mid x_s, x_0 = \hat x_0)$ (Kingma et al. 2021, VDM, eq. 33–34):

$$x_t = \frac{\alpha_t}{\alpha_s}e^{\Delta}\,x_s + \alpha_t(1 - e^{\Delta})\,\hat x_0 + v^{1/2} z,$$

with variance $v = \tilde\beta = \sigma_t^2(1 - e^{\Delta})$ (``variance="posterior"``) or the
forward step's $v = \beta = \sigma_s^2(1 - e^{\Delta})$ (``variance="beta"``). For the VP-SDE
on DDPM's grid these are exactly $\frac{1}{\sqrt{\alpha_i}}(x_i - \frac{\beta_i}{\sqrt{1 -
\bar\alpha_i}}\hat\varepsilon) + \sigma_i z$ with $\sigma_i^2 = \tilde\beta_i$ or $\beta_i$; for
the VE-SDE the posterior choice is SMLD's ancestral sampler (Song et al. 2021, App. F):
$x_t = x_s + (\sigma_s^2 - \sigma_t^2)s_\theta + \sqrt{\sigma_t^2(\sigma_s^2 - \sigma_t^2)/
\sigma_s^2}\,z$. One network evaluation per step.

With `VPSDE.from_schedule(schedule)`, ``grid="uniform"``, ``t_end = 1/N`` and ``nfe = N``,
`sample` runs DDPM's Algorithm 2 exactly: $N-1$ ancestral steps and the final
$z = 0$ step, which is the Tweedie denoising step.
"""

from __future__ import annotations

import math

import torch

from ..validation import check_choice
from .base import FixedGridSolver, StepContext
from .registry import register_solver

VARIANCES = ("posterior", "beta")


@register_solver("ancestral")
class Ancestral(FixedGridSolver):
    """Ancestral (DDPM) sampling; 1 evaluation per step, weak order 1."""

    order = 1.0
    stochastic = True

    def __init__(self, variance: str = "posterior") -> None:
        self.variance = check_choice("variance", variance, VARIANCES)

    def step(self, ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
        a_s, a_t, s_s, s_t = ctx.alpha[i], ctx.alpha[i + 1], ctx.sigma[i], ctx.sigma[i + 1]
        one_minus = -math.expm1(ctx.lam[i] - ctx.lam[i + 1])        # 1 - e^Delta
        eps = ctx.eps(x, i)
        # the mean with x0 = (x - s_s eps)/a_s substituted: (a_t/a_s) x - a_t s_s (1 - e^D)/a_s eps
        out = torch.add(x * (a_t / a_s), eps, alpha=-a_t * s_s * one_minus / a_s)
        var = (s_t if self.variance == "posterior" else s_s) ** 2 * one_minus
        return out.add_(ctx.noise(x), alpha=math.sqrt(var))
