r"""Euler–Maruyama on the reverse-time SDE (Song et al. 2021, "reverse diffusion"/EM predictor).

From $s = t_i$ to $t = t_{i+1} < s$, with $h = s - t > 0$:

$$x_t = x_s - h\,[f(s)\,x_s - g(s)^2\,s_\theta(x_s, s)] + g(s)\sqrt{h}\,z,\qquad z\sim N(0, I).$$

Weak order 1 (strong order ½); one network evaluation per step.
"""

from __future__ import annotations

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
        h = ctx.t[i] - ctx.t[i + 1]
        drift = ctx.f[i] * x - ctx.g2[i] * ctx.score(x, i)
        return x - h * drift + torch.sqrt(ctx.g2[i] * h) * ctx.noise(x)
