r"""DPM-Solver-2 and DPM-Solver-3, singlestep, in noise prediction (Lu, Zhou, Bao, Chen, Li &
Zhu 2022, "DPM-Solver: a fast ODE solver for diffusion probabilistic model sampling in around
10 steps", NeurIPS, Algorithms 1 and 2), for any SDE with linear drift.

With $\tilde\lambda = \log(\alpha/\sigma)$, $h = \tilde\lambda_{i+1} - \tilde\lambda_i$ and the
intermediate times $s_k = \tilde\lambda^{-1}(\tilde\lambda_i + r_k h)$ (through the SDE's
closed-form inverse log-SNR), one step from $x_i$ is, with $\hat\varepsilon_i =
\hat\varepsilon(x_i, t_i)$:

DPM-Solver-2 ($r_1 = \tfrac12$):

$$u = \frac{\alpha_{s_1}}{\alpha_i}x_i - \sigma_{s_1}(e^{h/2} - 1)\,\hat\varepsilon_i,\qquad
x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i}x_i - \sigma_{i+1}(e^{h} - 1)\,\hat\varepsilon(u, s_1);$$

DPM-Solver-3 ($r_1 = \tfrac13$, $r_2 = \tfrac23$):

$$u_1 = \frac{\alpha_{s_1}}{\alpha_i}x_i - \sigma_{s_1}(e^{r_1h} - 1)\hat\varepsilon_i,\quad
D_1 = \hat\varepsilon(u_1, s_1) - \hat\varepsilon_i,$$
$$u_2 = \frac{\alpha_{s_2}}{\alpha_i}x_i - \sigma_{s_2}(e^{r_2h} - 1)\hat\varepsilon_i
- \frac{\sigma_{s_2}r_2}{r_1}\Big(\frac{e^{r_2h} - 1}{r_2h} - 1\Big)D_1,\quad
D_2 = \hat\varepsilon(u_2, s_2) - \hat\varepsilon_i,$$
$$x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i}x_i - \sigma_{i+1}(e^{h} - 1)\hat\varepsilon_i
- \frac{\sigma_{i+1}}{r_2}\Big(\frac{e^{h} - 1}{h} - 1\Big)D_2 .$$

Singlestep: ``solver_order`` evaluations per step (2n or 3n for n steps), order 2 or 3. The
paper's "DPM-Solver-fast" mixes orders to spend any budget; here a budget the solver cannot
meet is a `BudgetError` naming the ones it can.
"""

from __future__ import annotations

import math

import torch

from ..validation import check_int
from .base import FixedGridSolver, StepContext
from .grids import PerSDEGrid, PerStepsGrid
from .registry import register_solver

#: the intermediate points r_k of DPM-Solver-2 and -3 (Lu et al. 2022, Algorithms 1-2)
R_POINTS = {2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


@register_solver("dpm_solver_singlestep")
class DPMSolverSinglestep(FixedGridSolver):
    """DPM-Solver-2 / -3 (singlestep, noise prediction); ``solver_order`` evaluations per
    step, order ``solver_order``.

    **Arguments:** ``solver_order``: 2 or 3 (default 3)."""

    order = 3.0               # the default instance's; each instance sets its own
    cost_per_step = 3
    #: the rule per SDE (and, where it changes with the budget, per number of steps) that
    #: measured best at 10-20 evaluations on exact targets
    #: (experiments/default_grids.py, docs/results.md)
    default_grid = PerSDEGrid({"vp": "quadratic", "subvp": "quadratic",
                               "ve": PerStepsGrid({3: "karras"}, otherwise="uniform")},
                              fallback="quadratic")

    def __init__(self, solver_order: int = 3) -> None:
        self.solver_order = check_int("solver_order", solver_order, 2)
        if self.solver_order > 3:
            raise ValueError(f"solver_order must be 2 or 3, got {solver_order}")
        self.order = float(self.solver_order)
        self.cost_per_step = self.solver_order

    def init(self, ctx: StepContext, x: torch.Tensor) -> None:
        sde = ctx.sde
        r = torch.tensor(R_POINTS[self.solver_order], dtype=torch.float64)
        lam = torch.tensor(ctx.lam, dtype=torch.float64)                 # log-SNR, 2 lambda~
        lam_mid = lam[:-1, None] + r[None, :] * (lam[1:] - lam[:-1])[:, None]
        t_mid = sde.log_snr_inverse(lam_mid)
        # round-off must not take an intermediate time outside its step
        g = ctx.grid.to(device="cpu", dtype=torch.float64)
        t_mid = torch.minimum(torch.maximum(t_mid, g[1:, None]), g[:-1, None])
        alpha, sigma = sde.coefficients(t_mid)[:2]
        ctx.state.update(t_mid=t_mid.to(dtype=x.dtype, device=x.device), a_mid=alpha.tolist(),
                         s_mid=sigma.tolist())

    def _eps_mid(self, ctx: StepContext, u: torch.Tensor, i: int, k: int) -> torch.Tensor:
        st = ctx.state
        return ctx.model.evaluate(u, st["t_mid"][i, k], st["a_mid"][i][k], st["s_mid"][i][k],
                                  **ctx.cond)

    def step(self, ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
        a_s, a_t, s_t = ctx.alpha[i], ctx.alpha[i + 1], ctx.sigma[i + 1]
        h = 0.5 * (ctx.lam[i + 1] - ctx.lam[i])
        a1, s1 = ctx.state["a_mid"][i][0], ctx.state["s_mid"][i][0]
        e0 = ctx.eps(x, i)
        phi1 = math.expm1(h)
        if self.solver_order == 2:
            u = torch.add(x * (a1 / a_s), e0, alpha=-s1 * math.expm1(0.5 * h))
            return torch.add(x * (a_t / a_s), self._eps_mid(ctx, u, i, 0), alpha=-s_t * phi1)
        r1, r2 = R_POINTS[3]
        a2, s2 = ctx.state["a_mid"][i][1], ctx.state["s_mid"][i][1]
        u1 = torch.add(x * (a1 / a_s), e0, alpha=-s1 * math.expm1(r1 * h))
        d1 = self._eps_mid(ctx, u1, i, 0).sub_(e0)
        phi12 = math.expm1(r2 * h)
        phi22 = phi12 / (r2 * h) - 1.0
        u2 = torch.add(x * (a2 / a_s), e0, alpha=-s2 * phi12).add_(d1, alpha=-s2 * r2 / r1 * phi22)
        d2 = self._eps_mid(ctx, u2, i, 1).sub_(e0)
        phi2 = phi1 / h - 1.0
        return torch.add(x * (a_t / a_s), e0, alpha=-s_t * phi1).add_(d2, alpha=-s_t * phi2 / r2)
