r"""EDM's second-order Heun sampler (Karras et al. 2022, Algorithm 2), for any SDE here.

The probability-flow ODE in the scaled variables $\tilde x = x/\alpha$,
$\tilde\sigma = \sigma/\alpha = e^{-\lambda/2}$ is
$d\tilde x/d\tilde\sigma = \hat\varepsilon(\alpha\tilde x, t)$
(exact for every SDE with linear drift; for VP it is EDM's ODE with its scaling). One step
from $\tilde\sigma_i$ to $\tilde\sigma_{i+1}$:

$$d = \hat\varepsilon(x_i, t_i),\quad
\tilde x' = \tilde x_i + (\tilde\sigma_{i+1} - \tilde\sigma_i)\,d,\quad
\tilde x_{i+1} = \tilde x_i
  + (\tilde\sigma_{i+1} - \tilde\sigma_i)\tfrac{d + \hat\varepsilon(x', t_{i+1})}{2},$$

with the last step plain Euler (EDM). Cost $2n - 1$ evaluations for $n$ steps; order 2.
Optional churn (EDM's $S_\text{churn}, S_{tmin}, S_{tmax}, S_\text{noise}$): before a step,
raise the noise level to $\hat\sigma = \tilde\sigma_i(1+\gamma)$,
$\gamma = \min(S_\text{churn}/n, \sqrt2 - 1)$, by adding
$\sqrt{\hat\sigma^2 - \tilde\sigma_i^2}\,S_\text{noise}\,z$; the solver is then stochastic.
Churn applies where $S_{tmin} \le \tilde\sigma_i \le S_{tmax}$ (noise levels
$\tilde\sigma$, not times); $\hat\sigma$ is capped at $\tilde\sigma(T)$ (so $\hat t \le T$).
"""

from __future__ import annotations

import math

import torch

from ..validation import check_real
from .base import FixedGridSolver, StepContext
from .grids import PerSDEGrid
from .registry import register_solver


@register_solver("heun")
class Heun(FixedGridSolver):
    """EDM Heun on the PF-ODE; 2n - 1 evaluations for n steps, order 2."""

    order = 2.0
    #: the rule per SDE that measured best at 10-20 evaluations on exact targets
    #: (experiments/default_grids.py, docs/results.md)
    default_grid = PerSDEGrid({"vp": "quadratic", "subvp": "uniform", "ve": "karras"},
                              fallback="quadratic")

    def __init__(self, churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                 s_noise: float = 1.0) -> None:
        check_real("churn", churn, low=0.0)
        self.churn, self.s_tmin, self.s_tmax, self.s_noise = float(churn), s_tmin, s_tmax, s_noise
        self.stochastic = self.churn > 0

    def nfe_for_steps(self, n_steps: int) -> int:
        return 2 * n_steps - 1

    def cost_formula(self) -> str:
        return "2n - 1 evaluations for n steps"

    def _churn(self, ctx: StepContext, xs: torch.Tensor, i: int
               ) -> tuple[torch.Tensor, float, torch.Tensor, float] | None:
        """(scaled x, sigma-tilde, time, alpha) after the churn, or None without churn."""
        if self.churn == 0:
            return None
        s_i = ctx.sigma[i] / ctx.alpha[i]                     # host floats: no device sync
        if not (self.s_tmin <= s_i <= self.s_tmax):
            return None
        sde = ctx.sde
        gamma = min(self.churn / ctx.n_steps, math.sqrt(2.0) - 1.0)
        s_max = math.exp(-0.5 * ctx.lam[0])                   # sigma-tilde(T)
        s_hat = min(s_i * (1 + gamma), s_max)
        lam_hat = torch.tensor(-2.0 * math.log(s_hat), dtype=torch.float64)
        t_hat = min(float(sde.log_snr_inverse(lam_hat)), sde.T)
        a_hat = float(sde.alpha(torch.tensor(t_hat, dtype=torch.float64)))
        xs = xs.add(ctx.noise(xs), alpha=math.sqrt(s_hat ** 2 - s_i ** 2) * self.s_noise)
        return xs, s_hat, torch.tensor(t_hat, dtype=xs.dtype, device=xs.device), a_hat

    def step(self, ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
        a_i, a_next = ctx.alpha[i], ctx.alpha[i + 1]
        xs = x / a_i
        churned = self._churn(ctx, xs, i)
        s_next = ctx.sigma[i + 1] / a_next
        if churned is None:
            h = s_next - ctx.sigma[i] / a_i
            d = ctx.eps(x, i)
        else:
            xs, s_hat, t_hat, a_hat = churned
            h = s_next - s_hat
            d = ctx.model.evaluate(a_hat * xs, t_hat, a_hat, a_hat * s_hat, **ctx.cond)
        x_next = torch.add(xs, d, alpha=h)
        if i < ctx.n_steps - 1:
            d2 = ctx.eps(x_next * a_next, i + 1)
            x_next = torch.add(xs, d + d2, alpha=0.5 * h)
        return x_next.mul_(a_next)
