r"""SA-Solver, the stochastic Adams solver (Xue, Yi, Luo, Zhang, Sun, Li & Ma 2023, "SA-Solver:
stochastic Adams solver for fast sampling of diffusion models", NeurIPS), in data prediction,
for any SDE with linear drift.

**The equation.** For any $\tau(t) \ge 0$ the SDE
$dx = \big[f x - \tfrac{1 + \tau^2}{2}g^2\nabla\log p_t(x)\big]dt + \tau g\,d\bar w$ has the
marginals $p_t$ of the forward SDE: $\tau = 0$ is the probability-flow ODE, $\tau = 1$ the
reverse SDE. In $\tilde\lambda = \log(\alpha/\sigma)$ (half our log-SNR) and with the data
prediction $\hat x_0$, variation of constants gives on a step $[\tilde\lambda_i, \tilde\lambda_{i+1}]$,
$h = \tilde\lambda_{i+1} - \tilde\lambda_i$, with $\tau$ constant on the step and $c = 1 + \tau^2$:

$$x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-\tau^2 h}x_i
+ \alpha_{i+1}\,c\int_{\tilde\lambda_i}^{\tilde\lambda_{i+1}} e^{c(\lambda - \tilde\lambda_{i+1})}
\hat x_0(x_\lambda, \lambda)\,d\lambda
+ \sigma_{i+1}\sqrt{1 - e^{-2\tau^2 h}}\;\xi_i,\qquad \xi_i \sim N(0, I).$$

**The steps.** SA-Solver replaces $\hat x_0$ by its Lagrange interpolant in $\lambda$ through
earlier evaluations $m_j = \hat x_0(x_j, t_j)$, which turns the integral into weights
$\alpha_{i+1}w_j$ of the $m_j$:

- SA-Predictor (stochastic Adams-Bashforth, $p$ nodes $\tilde\lambda_i, \dots, \tilde\lambda_{i-p+1}$):
  $x^p_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-\tau^2h}x_i + \alpha_{i+1}\sum_j w^p_j m_j
  + \sigma_{i+1}\sqrt{1 - e^{-2\tau^2h}}\,\xi_i$;
- SA-Corrector (stochastic Adams-Moulton, $c_\text{c}$ nodes $\tilde\lambda_{i+1}, \tilde\lambda_i,
  \dots, \tilde\lambda_{i-c_\text{c}+2}$): the same step with the weights $w^c_j$ and the same
  $\xi_i$, where the new node's value is $m_{i+1} = \hat x_0(x^p_{i+1}, t_{i+1})$. That
  evaluation is also the next predictor's $m_{i+1}$ (the paper's "PEC" mode): the corrector
  costs no evaluation, one per step in all. The corrected state is the next step's start.

**The weights, exactly.** With $s = (\lambda - \tilde\lambda_{i+1})/h \in [-1, 0]$, the nodes
$s_j = (\tilde\lambda_j - \tilde\lambda_{i+1})/h$ and the Lagrange basis
$\ell_j(s) = \prod_{k \ne j}\frac{s - s_k}{s_j - s_k} = \sum_k a_{jk}s^k$ (expanded on the host),

$$w_j = c\,h\int_{-1}^{0} e^{chs}\,\ell_j(s)\,ds = \sum_k a_{jk}E_k,\qquad
E_k = c\,h\int_{-1}^{0} e^{chs}s^k\,ds = \frac{(-1)^k\,k!}{(ch)^k}\,P(k + 1, ch),$$

$P(a, z) = \gamma(a, z)/\Gamma(a)$ the regularised lower incomplete gamma function
(substitute $v = -chs$). `exp_moment` sums $k!\,z^{-k}P(k + 1, z)$ in float64 from series of
positive terms only: $e^{-z}\frac{z}{k+1}\sum_{n \ge 0}\frac{z^n}{(k+2)\cdots(k+1+n)}$ for
$z \le k + 1$, else $k!\,z^{-k}\big(1 - e^{-z}\sum_{m \le k} z^m/m!\big)$ (that sum times
$e^{-z}$ is below 1/2 there: no cancellation). The weights are then accurate to near
round-off for every step size (tests/test_sa_solver.py checks them against scipy quadrature
for $h$ from $10^{-6}$ to 15, and that they sum to $1 - e^{-ch}$). The closed forms of the
authors' code (moments of the absolute $\lambda$, combined with Lagrange coefficients in
$\lambda$) cancel instead: for four nodes near $\lambda = 3$, in float64, their relative error
is $10^{-3}$ at $h = 10^{-3}$ and of order 1 at $h = 10^{-4}$. With $\tau = 0$ and one node this
is DDIM; with one node and $\tau = 1$, DDIM with ``eta=1``; with two predictor nodes, no
corrector and $\tau^2 = \eta$ it is DPM-Solver++(2M) SDE with ``solver_type="heun"``
(`dpm_solver_sde`), step for step.

**Orders.** Step $i$ of $n$ has predictor order $\min(p, i + 1)$ and corrector order
$\min(c_\text{c}, i + 2)$ (the warm-up: as many nodes as are known); with ``lower_order_final``
(default, as the authors and diffusers) also at most $n - i$ and $n - i + 1$, so the last step
is first order. No corrector follows the last step: its evaluation would be at $t_\text{end}$,
which `sample`'s denoising step (``denoise=True``) makes instead (as UniPC,
`scoresde.samplers.unipc`). With $\tau = 0$ the method is a deterministic exponential Adams
method in $\lambda$: order $p$ without corrector and $\min(c_\text{c}, p + 1)$ with one (the
predicted node's error, $O(h^{p+1})$, enters with a weight $O(h)$). The declared `order` is
that, and 1 when $\tau > 0$ (a stochastic method: weak order 1, as Euler-Maruyama; the
interpolation lowers the error constant, not the order). Measured (tests/test_sa_solver.py,
2-D mixture, log-SNR grid, 20-160 steps): slopes 1.0, 2.0, 2.9 for $p$ = 1-3 without
corrector, 2.0 for $(p, c_\text{c}) = (1, 2)$, 3.0 for $(2, 3)$, 4.0 for $(3, 4)$ without
``lower_order_final``. Two caps show at small errors: the first-order last step
(``lower_order_final``) caps the global order at 2 -- for $(3, 4)$ the local slope falls from
3.8 to 2.4 between 40 and 640 steps -- and the first warm-up step, first order without a
corrector, does too: for $p = 4$, no corrector, the local slope falls from 4 to 2.1-3.1 by 640 steps
(VE earliest). With a corrector the first step is second order, and $(3, 4)$ keeps slope 4.0
up to 640 steps without ``lower_order_final``.

**Stochasticity.** ``tau`` is a constant $\tau \ge 0$ on every step; with ``tau_interval =
(lo, hi)`` only the steps that start at a noise level $\tilde\sigma_i = \sigma_i/\alpha_i$ in
$[lo, hi]$ are stochastic and the others deterministic (diffusers' default ``tau_func`` is
$\tau = 1$ for DDPM timesteps 200-800, noise levels of about 0.7-25 on its linear schedule).
Each stochastic step draws one $\xi_i$ from the generator (`StepContext.noise`); a
deterministic step draws none.

**Rescaling** (``rescale=True``; the authors' few-step sampler and diffusers' scheduler, the
paper's Appendix D): in every step with exactly two nodes, the weight of the divided
difference $(m_a - m_b)/(\tilde\lambda_a - \tilde\lambda_b)$, exactly $(ch - 1 + e^{-ch})/c$, is
replaced by $\tfrac12 c h^2$ in the predictor ($a = i$, $b = i - 1$) and by $\tfrac12 c h^2$
too in the corrector ($a = i + 1$, $b = i$): an $O(h^3)$ change, the order is unchanged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from ..validation import check_int, check_real
from .base import FixedGridSolver, StepContext
from .registry import register_solver

__all__ = ["SASolver", "lagrange_exp_weights", "exp_moment"]


def exp_moment(k: int, z: float) -> float:
    r"""$k!\,z^{-k}P(k + 1, z) = \int_0^1 e^{-zu}\,z\,u^k\,du$ for an integer ``k >= 0`` and
    ``z > 0`` ($P$ the regularised lower incomplete gamma function), in float64 from sums of
    positive terms only (module docstring): $e^{-z}\frac{z}{k+1}\sum_{n\ge0}
    \frac{z^n}{(k+2)\cdots(k+1+n)}$ for $z \le k + 1$, else
    $k!\,z^{-k}\big(1 - e^{-z}\sum_{m \le k} z^m/m!\big)$."""
    if z > k + 1:
        term, total = 1.0, 1.0
        for m in range(1, k + 1):
            term *= z / m
            total += term
        return math.factorial(k) / z ** k * (1.0 - math.exp(-z) * total)
    # the ratio of consecutive terms, z / (k + 1 + n) <= 1, falls
    term, total, n = 1.0, 1.0, 0
    while term > 1e-17 * total:
        n += 1
        term *= z / (k + 1 + n)
        total += term
    return math.exp(-z) * z / (k + 1) * total


def _poly_mul(p: list[float], q: list[float]) -> list[float]:
    out = [0.0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def lagrange_exp_weights(nodes: Sequence[float], lam_from: float, lam_to: float, c: float
                         ) -> list[float]:
    r"""$w_j = c\int_{\lambda_\text{from}}^{\lambda_\text{to}} e^{c(\lambda - \lambda_\text{to})}
    \ell_j(\lambda)\,d\lambda$ for the Lagrange basis $\ell_j$ through ``nodes`` (distinct
    values of $\tilde\lambda$), ``lam_to > lam_from`` and ``c >= 1``: exact closed forms in float64
    (module docstring). SA-Solver's step adds $\alpha_{i+1}\sum_j w_j m_j$."""
    h = lam_to - lam_from
    if not h > 0.0:
        raise ValueError(f"lam_to must exceed lam_from, got {lam_from!r} -> {lam_to!r}")
    s = [(v - lam_to) / h for v in nodes]
    ch = c * h
    moments = [(-1.0) ** k * exp_moment(k, ch) for k in range(len(s))]
    weights = []
    for j, sj in enumerate(s):
        poly = [1.0]
        for k, sk in enumerate(s):
            if k != j:
                poly = _poly_mul(poly, [-sk / (sj - sk), 1.0 / (sj - sk)])
        weights.append(sum(a * e for a, e in zip(poly, moments, strict=True)))
    return weights


def _check_interval(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in value)):
        raise TypeError(f"tau_interval must be None or a pair (lo, hi) of noise levels sigma/alpha, "
                        f"got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and lo >= 0.0 and not math.isnan(hi) and hi > lo):
        raise ValueError(f"tau_interval must be a pair (lo, hi) with 0 <= lo < hi (hi may be inf), "
                         f"got {value!r}")
    return lo, hi


@register_solver("sa_solver")
class SASolver(FixedGridSolver):
    r"""SA-Solver: SA-Predictor of order ``predictor_order`` + SA-Corrector of order
    ``corrector_order`` (0: none), stochasticity ``tau``; 1 evaluation per step.

    **Arguments:** ``predictor_order`` $p$ in 1-4; ``corrector_order`` in 0-4 (the number of
    nodes of the corrector, the new one included; 0 turns it off); ``tau`` $\ge 0$ (0: the
    deterministic exponential Adams method on the PF-ODE; 1: the reverse SDE); ``tau_interval``
    (None, or ``(lo, hi)``: ``tau`` only on steps starting at a noise level $\sigma/\alpha$ in
    ``[lo, hi]``, 0 elsewhere); ``lower_order_final`` (default True); ``rescale`` (the
    authors' order-2 rescaling, default False). The declared `order` is 1 when stochastic,
    else $p$ without corrector and $\min(c, p + 1)$ with one."""

    order = 1.0               # the default instance's (tau=0.5); each instance sets its own
    stochastic = True
    #: measured best (SW2 at NFE 10-20 on two exact targets; experiments/sa_solver_table.py
    #: --select, docs/results.md) on VP and sub-VP, tied with uniform/logsnr on VE
    default_grid = "quadratic"

    def __init__(self, predictor_order: int = 2, corrector_order: int = 3, tau: float = 0.5,
                 tau_interval: tuple[float, float] | None = None, lower_order_final: bool = True,
                 rescale: bool = False) -> None:
        self.predictor_order = check_int("predictor_order", predictor_order, 1)
        if self.predictor_order > 4:
            raise ValueError(f"predictor_order must be 1, 2, 3 or 4, got {predictor_order}")
        self.corrector_order = check_int("corrector_order", corrector_order, 0)
        if self.corrector_order > 4:
            raise ValueError(f"corrector_order must be 0 (no corrector), 1, 2, 3 or 4, got "
                             f"{corrector_order}")
        self.tau = check_real("tau", tau, low=0.0)
        self.tau_interval = _check_interval(tau_interval)
        for name, v in (("lower_order_final", lower_order_final), ("rescale", rescale)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be a bool, got {v!r}")
        self.lower_order_final = lower_order_final
        self.rescale = rescale
        self.stochastic = self.tau > 0
        p, c = self.predictor_order, self.corrector_order
        self.order = 1.0 if self.stochastic else float(p if c == 0 else min(c, p + 1))

    def step_orders(self, i: int, n: int) -> tuple[int, int]:
        """(predictor order, corrector order) of step ``i`` of ``n``; corrector order 0: none."""
        p = min(self.predictor_order, i + 1)
        c = min(self.corrector_order, i + 2)
        if self.lower_order_final:
            p, c = min(p, n - i), min(c, n - i + 1)
        return p, (c if i < n - 1 else 0)

    def step_tau(self, ctx: StepContext, i: int) -> float:
        """$\\tau$ on step ``i``: ``tau``, or 0 outside ``tau_interval``."""
        if self.tau_interval is None:
            return self.tau
        lo, hi = self.tau_interval
        return self.tau if lo <= ctx.sigma[i] / ctx.alpha[i] <= hi else 0.0

    def _weights(self, lam: list[float], i: int, nodes: list[int], c: float) -> list[float]:
        """The weights of the nodes (grid indices), with the rescaling of two-node steps."""
        w = lagrange_exp_weights([lam[j] for j in nodes], lam[i], lam[i + 1], c)
        if self.rescale and len(nodes) == 2:
            h = lam[i + 1] - lam[i]
            ch = c * h
            d = (0.5 * c * h * h - (ch + math.expm1(-ch)) / c) / (lam[nodes[0]] - lam[nodes[1]])
            w = [w[0] + d, w[1] - d]
        return w

    def init(self, ctx: StepContext, x: torch.Tensor) -> None:
        """Plan every step on the host: per step, the coefficient of $x_i$, of the noise, and
        $\\alpha_{i+1}w$ for the predictor's nodes $i, i-1, \\dots$ and the corrector's
        $i+1, i, \\dots$."""
        lam = [0.5 * v for v in ctx.lam]
        n = ctx.n_steps
        plan = []
        for i in range(n):
            p, c = self.step_orders(i, n)
            tau = self.step_tau(ctx, i)
            k = 1.0 + tau * tau
            h = lam[i + 1] - lam[i]
            a = ctx.alpha[i + 1]
            cx = ctx.sigma[i + 1] / ctx.sigma[i] * math.exp(-tau * tau * h)
            cn = ctx.sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * tau * tau * h)) if tau > 0 else 0.0
            wp = [a * w for w in self._weights(lam, i, [i - j for j in range(p)], k)]
            wc = [a * w for w in self._weights(lam, i, [i + 1 - j for j in range(c)], k)] if c else []
            plan.append((cx, cn, wp, wc))
        ctx.state.update(plan=plan, m=[], next_m=None, keep=max(self.predictor_order,
                                                                  self.corrector_order - 1))

    @staticmethod
    def _x0(ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
        return torch.add(x, ctx.eps(x, i), alpha=-ctx.sigma[i]).div_(ctx.alpha[i])

    def step(self, ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
        st = ctx.state
        hist = st["m"]
        hist.append(self._x0(ctx, x, i) if st["next_m"] is None else st["next_m"])   # m_i
        st["next_m"] = None
        del hist[:-st["keep"]]
        cx, cn, wp, wc = st["plan"][i]
        base = x * cx
        if cn:
            base.add_(ctx.noise(x), alpha=cn)
        x_pred = torch.add(base, hist[-1], alpha=wp[0])
        for j in range(1, len(wp)):
            x_pred.add_(hist[-1 - j], alpha=wp[j])
        if not wc:
            return x_pred
        m_new = self._x0(ctx, x_pred, i + 1)
        st["next_m"] = m_new
        out = torch.add(base, m_new, alpha=wc[0])
        for j in range(1, len(wc)):
            out.add_(hist[-j], alpha=wc[j])
        return out
