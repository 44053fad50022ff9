r"""The stochastic multistep DPM-Solver++(2M) SDE and (3M) SDE (Lu et al. 2022,
"DPM-Solver++: fast solver for guided sampling of diffusion probabilistic models",
Appendix: SDE-DPM-Solver++; in the multistep form and with the ``eta`` of k-diffusion's
``sample_dpmpp_2m_sde`` / ``sample_dpmpp_3m_sde``, Crowson et al.), for any SDE with linear
drift.

With $\tilde\lambda = \log(\alpha/\sigma)$, $h = \tilde\lambda_{i+1} - \tilde\lambda_i$,
$\bar h = (1 + \eta)h$ and $\hat x_0^{(k)}$ the data predictions, one step is

$$x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-\eta h}x_i + \alpha_{i+1}(1 - e^{-\bar h})\,\hat x_0^{(i)}
+ \alpha_{i+1}\,C_i + s_\text{noise}\,\sigma_{i+1}\sqrt{1 - e^{-2\eta h}}\;z,$$

where $C_i$ is the multistep correction, with $r_0 = h_0/h$, $r_1 = h_1/h$ the ratios of the
previous steps to this one and $\varphi_2 = 1 - (1 - e^{-\bar h})/\bar h$,
$\varphi_3 = \varphi_2/\bar h - \tfrac12$:

- second order (``solver_order=2`` from step 1 on; ``solver_order=3`` at step 1):
  $C = \tfrac12(1 - e^{-\bar h})D_{1,0}$ (``solver_type="midpoint"``) or $C = \varphi_2 D_{1,0}$
  (``"heun"``), $D_{1,0} = (\hat x_0^{(i)} - \hat x_0^{(i-1)})/r_0$;
- third order (``solver_order=3`` from step 2 on): $C = \varphi_2 D_1 - \varphi_3 D_2$ with $D_1$,
  $D_2$ of DPM-Solver++(3M) (`scoresde.samplers.dpm_solver_3m`);
- step 0: $C = 0$ (first order).

``eta = 0`` is the ODE solver: ``solver_order=2`` (midpoint) is `dpm_solver`
(DPM-Solver++(2M)) and ``solver_order=3, solver_type="midpoint"`` is `dpm_solver_3m` step for
step. ``eta = 1`` (the
default) solves the reverse SDE; its first-order step is the exact Gaussian posterior
$q(x_{i+1} \mid x_i, \hat x_0)$, i.e. `ddim` with ``eta=1`` (ancestral sampling).
Defaults as in k-diffusion: ``solver_type="midpoint"`` for ``solver_order=2``, ``"heun"``
for ``solver_order=3``. The noise comes from the generator, one draw per step. One evaluation per step;
stochastic when ``eta > 0`` (order 1 then: the multistep correction does not raise the
order of an SDE solve), else order 2 or 3.
"""

from __future__ import annotations

import math

import torch

from ..validation import check_choice, check_int, check_real
from .base import FixedGridSolver, StepContext
from .dpm_solver import DPMSolverPP2M
from .registry import register_solver


@register_solver("dpm_solver_sde")
class DPMSolverPPSDE(FixedGridSolver):
    """DPM-Solver++(2M) SDE (``solver_order=2``) and (3M) SDE (``solver_order=3``); 1 evaluation
    per step.

    **Arguments:** ``solver_order`` (2 or 3); ``eta`` >= 0 (0: the ODE solver, 1: the reverse SDE);
    ``s_noise`` (scale of the injected noise, k-diffusion's); ``solver_type`` (``"midpoint"``
    or ``"heun"``, the second-order correction; default: k-diffusion's, ``"midpoint"`` for
    order 2 and ``"heun"`` for order 3). The declared `order` is 1 for ``eta > 0`` and
    ``solver_order`` for ``eta = 0``."""

    order = 1.0               # the default instance's (eta=1); each instance sets its own
    stochastic = True
    #: dpm_solver's, so that eta=0 reproduces it with default arguments
    default_grid = DPMSolverPP2M.default_grid

    def __init__(self, solver_order: int = 2, eta: float = 1.0, s_noise: float = 1.0,
                 solver_type: str | None = None) -> None:
        self.solver_order = check_int("solver_order", solver_order, 2)
        if self.solver_order > 3:
            raise ValueError(f"solver_order must be 2 or 3, got {solver_order}")
        self.eta = check_real("eta", eta, low=0.0)
        self.s_noise = check_real("s_noise", s_noise, low=0.0)
        if solver_type is None:
            solver_type = "midpoint" if self.solver_order == 2 else "heun"
        self.solver_type = check_choice("solver_type", solver_type, ("midpoint", "heun"))
        self.stochastic = self.eta > 0 and self.s_noise > 0
        self.order = 1.0 if self.eta > 0 else float(self.solver_order)

    def init(self, ctx: StepContext, x: torch.Tensor) -> None:
        ctx.state["x0"] = []
        ctx.state["lam"] = [0.5 * v for v in ctx.lam]

    def step(self, ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
        s_s, s_t, a_t = ctx.sigma[i], ctx.sigma[i + 1], ctx.alpha[i + 1]
        m0 = torch.add(x, ctx.eps(x, i), alpha=-s_s).div_(ctx.alpha[i])
        lam, hist = ctx.state["lam"], ctx.state["x0"]
        h = lam[i + 1] - lam[i]
        hb = (1.0 + self.eta) * h
        one_m = -math.expm1(-hb)                                   # 1 - e^{-h_bar}
        out = torch.add(x * (s_t / s_s * math.exp(-self.eta * h)), m0, alpha=a_t * one_m)
        p = min(self.solver_order, i + 1)
        phi2 = 1.0 - one_m / hb
        if p == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            c = a_t * (0.5 * one_m if self.solver_type == "midpoint" else phi2) / r0
            out.add_(m0, alpha=c).add_(hist[-1], alpha=-c)
        elif p == 3:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            phi3 = phi2 / hb - 0.5
            c10 = a_t * (phi2 * (1.0 + r0 / (r0 + r1)) - phi3 / (r0 + r1))
            c11 = a_t * (-phi2 * r0 / (r0 + r1) + phi3 / (r0 + r1))
            out.add_(m0, alpha=c10 / r0).add_(hist[-1], alpha=-c10 / r0 + c11 / r1)
            out.add_(hist[-2], alpha=-c11 / r1)
        hist.append(m0)
        if len(hist) > 2:
            hist.pop(0)
        if self.stochastic:
            out.add_(ctx.noise(x), alpha=self.s_noise * s_t * math.sqrt(-math.expm1(-2.0 * self.eta * h)))
        return out
