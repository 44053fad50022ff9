r"""Predictor–corrector sampling (Song et al. 2021, Algorithms 2–5).

At each grid time $t_i$: ``n_corrector_steps`` steps of Langevin MCMC at fixed $t_i$,

$$x \leftarrow x + \epsilon\,s_\theta(x, t_i) + \sqrt{2\epsilon}\,z,\qquad
\epsilon = 2\,a_i\,\Big(r\frac{\|z\|}{\|s_\theta\|}\Big)^2,$$

with signal-to-noise ratio $r$ = ``snr``, the norms averaged over the batch as in the
reference implementation (a per-sample ratio explodes where the score vanishes, at the
modes), and $a_i = \alpha_i^2/\alpha_{i+1}^2$
($= 1 - \beta_i$ for VP and sub-VP, 1 for VE, as in Song et al.); then one step of the
``predictor`` (any fixed-grid solver by name) to $t_{i+1}$. Cost per step: the predictor's
plus ``n_corrector_steps``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..validation import check_int, check_positive
from .base import FixedGridSolver, StepContext
from .registry import make_solver, register_solver


@register_solver("pc")
class PredictorCorrector(FixedGridSolver):
    """Predictor + Langevin corrector."""

    stochastic = True

    def __init__(self, predictor: str = "euler_maruyama", snr: float = 0.16,
                 n_corrector_steps: int = 1, predictor_options: dict[str, Any] | None = None
                 ) -> None:
        check_positive("snr", snr)
        check_int("n_corrector_steps", n_corrector_steps, 0)
        pred = make_solver(predictor, **(predictor_options or {}))
        if not isinstance(pred, FixedGridSolver) or isinstance(pred, PredictorCorrector):
            raise ValueError(f"predictor must be a fixed-grid solver other than 'pc', got "
                             f"{predictor!r}")
        self.predictor, self.snr, self.n_corrector_steps = pred, float(snr), n_corrector_steps
        self.order = pred.order
        self.default_grid = pred.default_grid
        # Langevin steps draw noise; without them the predictor decides
        self.stochastic = pred.stochastic or n_corrector_steps > 0

    def nfe_for_steps(self, n_steps: int) -> int:
        return self.predictor.nfe_for_steps(n_steps) + self.n_corrector_steps * n_steps

    def cost_formula(self) -> str:
        return f"({self.predictor.cost_formula()}) + {self.n_corrector_steps}n corrector evaluations"

    def init(self, ctx: StepContext, x: torch.Tensor) -> None:
        self.predictor.init(ctx, x)

    def step(self, ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
        a = (ctx.alpha[i] / ctx.alpha[i + 1]) ** 2
        for _ in range(self.n_corrector_steps):
            grad = ctx.score(x, i)
            z = ctx.noise(x)
            g_norm = grad.reshape(x.shape[0], -1).norm(dim=1).mean()
            z_norm = z.reshape(x.shape[0], -1).norm(dim=1).mean()
            step = 2 * a * (self.snr * z_norm / g_norm) ** 2
            x = x + step * grad + torch.sqrt(2 * step) * z
        return self.predictor.step(ctx, x, i)
