r"""DDIM (Song, Meng & Ermon 2021), for any SDE with linear drift.

From $s = t_i$ to $t = t_{i+1}$, with $\hat x_0 = (x_s - \sigma_s\hat\varepsilon)/\alpha_s$ and
$\Delta = \lambda_s - \lambda_t$:

$$x_t = \alpha_t\hat x_0 + \sqrt{\sigma_t^2 - \sigma_\eta^2}\,\hat\varepsilon + \sigma_\eta z,
\qquad \sigma_\eta^2 = \eta^2\,\sigma_t^2(1 - e^{\Delta}).$$

``eta = 0`` is deterministic: $x_t/\alpha_t = x_s/\alpha_s + (\sigma_t/\alpha_t - \sigma_s/\alpha_s)
\hat\varepsilon$, the Euler step of the probability-flow ODE written as
$d(x/\alpha) = \hat\varepsilon\,d(\sigma/\alpha)$, i.e. the first-order exponential
integrator (DPM-Solver-1, Lu et al. 2022): order 1. ``eta = 1`` has DDPM's posterior
variance $\tilde\beta$ and equals `Ancestral` (``variance="posterior"``) draw for draw.
One network evaluation per step.
"""

from __future__ import annotations

import math

import torch

from ..validation import check_real
from .base import FixedGridSolver, StepContext
from .grids import PerSDEGrid
from .registry import register_solver


@register_solver("ddim")
class DDIM(FixedGridSolver):
    """DDIM with ``eta`` in [0, 1]; 1 evaluation per step, order 1."""

    order = 1.0
    #: the rule per SDE that measured best at 10-20 evaluations on exact targets
    #: (experiments/default_grids.py, docs/results.md)
    default_grid = PerSDEGrid({"vp": "quadratic", "subvp": "uniform", "ve": "uniform"},
                              fallback="quadratic")

    def __init__(self, eta: float = 0.0) -> None:
        self.eta = check_real("eta", eta, low=0.0, high=1.0)
        self.stochastic = self.eta > 0

    def step(self, ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
        a_s, a_t, s_s, s_t = ctx.alpha[i], ctx.alpha[i + 1], ctx.sigma[i], ctx.sigma[i + 1]
        eps = ctx.eps(x, i)
        var = self.eta ** 2 * s_t ** 2 * -math.expm1(ctx.lam[i] - ctx.lam[i + 1])
        # a_t x0 + sqrt(s_t^2 - var) eps with x0 = (x - s_s eps)/a_s, host coefficients
        out = torch.add(x * (a_t / a_s), eps, alpha=math.sqrt(s_t ** 2 - var) - a_t * s_s / a_s)
        if self.eta == 0.0:
            return out
        return out.add_(ctx.noise(x), alpha=math.sqrt(var))
