r"""Euler–Maruyama on the reverse-time SDE (Song et al. 2021, "reverse diffusion"/EM predictor).

From $s = t_i$ to $t = t_{i+1} < s$, with $h = s - t > 0$:

$$x_t = x_s - h\,[f(s)\,x_s - g(s)^2\,s_\theta(x_s, s)] + g(s)\sqrt{h}\,z,\qquad z\sim N(0, I).$$

Weak order 1 (strong order ½); one network evaluation per step.
"""

from __future__ import annotations

import math

import torch

from .base import FixedGridSolver, StepContext
from .registry import register_solver


@register_solver("euler_maruyama")
class EulerMaruyama(FixedGridSolver):
    """Euler–Maruyama on the reverse SDE; 1 evaluation per step, weak order 1."""

    order = 1.0
    stochastic = True

    def __init__(self) -> None:
        pass

    def step(self, ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
        # with s = -eps/sigma: x - h (f x + g^2 eps / sigma) + sqrt(g^2 h) z, host coefficients
        h = float(ctx.grid[i] - ctx.grid[i + 1])
        g2 = ctx.g2[i]
        eps = ctx.eps(x, i)
        out = torch.add(x * (1.0 - h * ctx.f[i]), eps, alpha=-h * g2 / ctx.sigma[i])
        return out.add_(ctx.noise(x), alpha=math.sqrt(g2 * h))
