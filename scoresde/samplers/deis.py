r"""DEIS, the time-Adams–Bashforth exponential integrator "tAB-DEIS" (Zhang & Chen 2023, "Fast
sampling of diffusion models with exponential integrator", ICLR, eqs. 14-15), for any SDE
with linear drift.

The probability-flow ODE in noise prediction, $dx/dt = f(t)\,x + \frac{g(t)^2}{2\sigma(t)}
\hat\varepsilon(x, t)$, has the exact solution
$x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i}x_i + \int_{t_i}^{t_{i+1}}\frac{\alpha_{i+1}}{\alpha_\tau}
\frac{g(\tau)^2}{2\sigma_\tau}\hat\varepsilon\,d\tau$, and
$\frac{g^2}{2\sigma\alpha} = \frac{d\rho}{dt}$ with $\rho = \sigma/\alpha$. tAB-DEIS of order $r$
replaces $\hat\varepsilon$ by its Lagrange interpolant **in $t$** through the last $q$
evaluations, $q = \min(r, i + 1)$ (lower orders while the history fills up):

$$x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i}x_i + \sum_{j=0}^{q-1} C_{ij}\,\hat\varepsilon(x_{i-j}, t_{i-j}),
\qquad C_{ij} = \alpha_{i+1}\int_{t_i}^{t_{i+1}}\prod_{k \ne j}
\frac{\tau - t_{i-k}}{t_{i-j} - t_{i-k}}\,d\rho(\tau).$$

The integrals are computed once per solve on the host, in float64: written in the log-SNR
$\lambda$ ($d\rho = -\tfrac12 e^{-\lambda/2}d\lambda$, $\tau = \lambda^{-1}$ through the SDE's
closed form), split at the SDE's `breakpoints` and into pieces of width at most 1 in
$\lambda$, each by 16-point Gauss–Legendre quadrature (the integrand is analytic in a strip
of half-width $\pi$ around each piece: the rule is exact to round-off). $r = 1$ is DDIM
($C_{i0} = \alpha_{i+1}(\rho_{i+1} - \rho_i)$). One evaluation per step; order $r$.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..sdes import SDE
from ..validation import check_int
from .base import FixedGridSolver, StepContext
from .grids import PerSDEGrid
from .registry import register_solver

#: Gauss-Legendre nodes per piece, and the widest piece in log-SNR
GL_NODES = 16
MAX_PIECE = 1.0


def tab_coefficients(sde: SDE, grid: torch.Tensor, order: int) -> list[list[float]]:
    r"""tAB-DEIS's $C_{ij}/\alpha_{i+1} = \int_{t_i}^{t_{i+1}}\ell_{ij}(\tau)\,d\rho(\tau)$ for
    every step ``i`` of ``grid`` (float64 times, decreasing) and ``j < min(order, i + 1)``."""
    g = grid.to(device="cpu", dtype=torch.float64)
    n = g.shape[0] - 1
    lam = sde.log_snr(g).tolist()
    bps = sorted(sde.breakpoints)
    cuts = sde.log_snr(torch.tensor(bps, dtype=torch.float64)).tolist() if bps else []
    x_gl, w_gl = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(GL_NODES))
    lo, hi, step = [], [], []
    for i in range(n):
        ends = [lam[i], *(c for c in cuts if lam[i] < c < lam[i + 1]), lam[i + 1]]
        for a, b in zip(ends[:-1], ends[1:], strict=True):
            m = max(1, math.ceil((b - a) / MAX_PIECE))
            for k in range(m):
                lo.append(a + (b - a) * k / m)
                hi.append(a + (b - a) * (k + 1) / m)
                step.append(i)
    lo_t, hi_t = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    idx = torch.tensor(step)
    u = 0.5 * (lo_t + hi_t)[:, None] + 0.5 * (hi_t - lo_t)[:, None] * x_gl[None, :]
    w = 0.5 * (hi_t - lo_t)[:, None] * w_gl[None, :] * (-0.5 * torch.exp(-0.5 * u))   # d rho
    tau = sde.log_snr_inverse(u)
    tau = torch.minimum(torch.maximum(tau, g[idx + 1][:, None]), g[idx][:, None])
    counts = torch.bincount(idx, minlength=n).tolist()          # pieces per step, in order
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    out = []
    for i in range(n):
        ti = tau[starts[i]:starts[i + 1]].reshape(-1)
        wi = w[starts[i]:starts[i + 1]].reshape(-1)
        q = min(order, i + 1)
        nodes = [float(g[i - k]) for k in range(q)]
        row = []
        for j in range(q):
            ell = torch.ones_like(ti)
            for k in range(q):
                if k != j:
                    ell = ell * (ti - nodes[k]) / (nodes[j] - nodes[k])
            row.append(float((ell * wi).sum()))
        out.append(row)
    return out


@register_solver("deis")
class DEIS(FixedGridSolver):
    """tAB-DEIS of order ``solver_order`` (1-3, default 3); 1 evaluation per step."""

    order = 3.0               # the default instance's; each instance sets its own
    #: the rule per SDE that measured best at 10-20 evaluations on exact targets
    #: (experiments/default_grids.py, docs/results.md)
    default_grid = PerSDEGrid({"vp": "quadratic", "subvp": "uniform", "ve": "karras"},
                              fallback="quadratic")

    def __init__(self, solver_order: int = 3) -> None:
        self.solver_order = check_int("solver_order", solver_order, 1)
        if self.solver_order > 3:
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}")
        self.order = float(self.solver_order)

    def init(self, ctx: StepContext, x: torch.Tensor) -> None:
        rows = tab_coefficients(ctx.sde, ctx.grid, self.solver_order)
        ctx.state.update(coef=[[ctx.alpha[i + 1] * c for c in row] for i, row in enumerate(rows)],
                         eps=[])

    def step(self, ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
        hist = ctx.state["eps"]
        hist.append(ctx.eps(x, i))
        del hist[:-self.solver_order]
        out = x * (ctx.alpha[i + 1] / ctx.alpha[i])
        for j, c in enumerate(ctx.state["coef"][i]):
            out.add_(hist[-1 - j], alpha=c)
        return out
