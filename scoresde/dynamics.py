r"""The reverse-time dynamics of a score model, written once: the reverse-SDE drift, the
probability-flow ODE's vector field and its divergence, and Tweedie's denoising step.

For the forward SDE $dx = f(t)\,x\,dt + g(t)\,dw$ and a score $s(x, t) \approx
\nabla_x\log p_t(x)$ (Song et al. 2021, "Score-based generative modeling through stochastic
differential equations", ICLR, eqs. 6 and 13):

- reverse-time SDE (Anderson 1982): $dx = [f(t)\,x - g(t)^2 s]\,dt + g(t)\,d\bar w$;
- probability-flow ODE: $dx/dt = h(x, t) = f(t)\,x - \tfrac12 g(t)^2 s$;
- its divergence: $\nabla\!\cdot h = D f(t) - \tfrac12 g(t)^2\,\nabla\!\cdot s$, and for a
  cotangent $v$, $v^\top(\partial h/\partial x)v = f(t)\|v\|^2 - \tfrac12 g^2
  v^\top(\partial s/\partial x)v$ (exact over a basis, Hutchinson over random probes);
- Tweedie: $\hat x_0 = (x + \sigma^2 s)/\alpha = (x - \sigma\hat\varepsilon)/\alpha$;
- the probability-flow ODE and its divergence in other variables than `t`
  ([`FlowVariable`][scoresde.dynamics.FlowVariable]: $\sigma/\alpha$, the log-SNR, and
  EDM's $x/\alpha$ against $\sigma/\alpha$).

Both drifts are written for integration with time running backwards ($dt < 0$). The
samplers (`scoresde.samplers`), the likelihood, encode/decode (`scoresde.likelihood`) and
the final denoising step all use these functions; each network evaluation goes through the
model's public fast path [`ScoreModel.evaluate`][scoresde.models.ScoreModel.evaluate]
with coefficients from [`SDE.coefficients`][scoresde.sdes.SDE.coefficients].
"""

from __future__ import annotations

import math

import torch

from .models import ScoreModel
from .sdes import SDE, Coefficients
from .validation import as_time, bcast, check_batch

Tensor = torch.Tensor

__all__ = ["reverse_drift", "drift_from_score", "score_at", "ProbabilityFlow",
           "ProbabilityFlowWithDivergence", "FlowVariable", "FLOW_VARIABLES", "tweedie_denoise",
           "EXACT_MAX_ELEMS"]

# On accelerators the exact divergence takes D vector-Jacobian products of a (B, D) output
# at once, an intermediate of D * B * D elements; above this many (128 MiB in float64) the
# basis is split into chunks (a loop over chunks, each one batched backward pass). On the
# CPU every cotangent gets its own backward pass (faster there).
EXACT_MAX_ELEMS = 2 ** 24


def drift_from_score(x: Tensor, score: Tensor, f: Tensor | float, g2: Tensor | float,
                     probability_flow: bool = False) -> Tensor:
    r"""The reverse drift $f x - c\,g^2 s$ with $c = 1$ (reverse SDE) or $c = \tfrac12$
    (probability-flow ODE), from precomputed coefficients `f`, `g2` (floats, or tensors of
    shape `()` or `(B,)`). Unchecked: the one place the formula is written."""
    c = 0.5 if probability_flow else 1.0
    return bcast(f, x) * x - bcast(c * g2, x) * score


def reverse_drift(sde: SDE, x: Tensor, t: float | Tensor, score: Tensor,
                  probability_flow: bool = False) -> Tensor:
    r"""Drift of the reverse-time SDE, $f(t) x - g(t)^2 s$, or of the probability-flow ODE,
    $f(t) x - \tfrac12 g(t)^2 s$, for a given `score` (shape of `x`); checked inputs."""
    check_batch(x)
    t = as_time(t, x.shape[0], x, T=sde.T)
    if not isinstance(score, Tensor) or score.shape != x.shape:
        shape = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
        raise ValueError(f"score shape {shape} != x shape {tuple(x.shape)}")
    c = sde.coefficients(t)
    return drift_from_score(x, score, c.f, c.g2, probability_flow)


def score_at(model: ScoreModel, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
    """$s(x, t)$ for a 0-d time tensor in range (one network evaluation, unchecked)."""
    c = model.sde.coefficients(t)
    return model.evaluate(x, t, c.alpha, c.sigma, "score", **cond)


#: the variables the probability-flow ODE can be integrated in (`FlowVariable`)
FLOW_VARIABLES = ("t", "sigma", "log_snr", "edm")


class FlowVariable:
    r"""The probability-flow ODE written in another independent variable $v$ (and, for
    `"edm"`, another scale of its state), with its log-density increment transformed
    consistently.

    With $\tilde\sigma = \sigma/\alpha = e^{-\lambda/2}$ (the noise level of the data
    scaled to $\alpha = 1$: EDM's $\sigma$, Karras et al. 2022) and
    $u = \log\tilde\sigma = -\lambda/2$:

    | name | $v$ | state | $w = dt/dv$ | field |
    | --- | --- | --- | --- | --- |
    | `"t"` | $t$ | $x$ | 1 | $h$ |
    | `"sigma"` | $\tilde\sigma$ | $x$ | $2\sigma\alpha/g^2$ | $w h$ |
    | `"log_snr"` | $u = -\lambda/2$ | $x$ | $2\sigma^2/g^2$ | $w h$ |
    | `"edm"` | $\tilde\sigma$ | $y = x/\alpha$ | $2\sigma\alpha/g^2$ | $\hat\varepsilon(\alpha y, t)$ |

    ($d\lambda/dt = -g^2/\sigma^2$ gives $w$.) `"edm"` is the "VE view" of EDM and
    DDIM: $dy/d\tilde\sigma = \hat\varepsilon$ exactly for every SDE with linear drift,
    and an Euler step in it is a DDIM step. In every variable the log-density increment per
    unit $v$ is $w\,\nabla_x\!\cdot h = a D - b\,\nabla_x\!\cdot s$ with $a = w f$,
    $b = w g^2/2$ ($b = \tfrac12 g^2$, $\sigma\alpha$, $\sigma^2$, $\sigma\alpha$): for
    the state $y$ it is the divergence of the $y$-field, $-b\,\nabla_x\!\cdot s$, plus
    $D\,d\log\alpha/dv$, the log-Jacobian of $y = x/\alpha$ (docs/math.md, "The
    probability-flow ODE in other variables"), so the integral $\ell$ is the same in every
    variable. `coefficients(v)` returns $t(v)$, the SDE's coefficients there, $a$ and $b$.

    Every variable but `"t"` maps $v \mapsto t$ with the SDE's closed-form inverse
    log-SNR ([`SDE.log_snr_inverse`][scoresde.sdes.SDE.log_snr_inverse]) and needs
    $\sigma > 0$ over the range; otherwise it is a `ValueError` naming the reason.

    **Arguments:** `sde`; `name` in `FLOW_VARIABLES`; `t_range = (t_lo, t_hi)`: the times
    the solve covers (`time` clamps into it, so rounding in $t(v)$ never takes the network
    outside the range).
    """

    def __init__(self, sde: SDE, name: str, t_range: tuple[float, float]) -> None:
        if name not in FLOW_VARIABLES:
            raise ValueError(f"variable must be one of {FLOW_VARIABLES}, got {name!r}")
        self.sde, self.name = sde, name
        self.t_lo, self.t_hi = float(min(t_range)), float(max(t_range))
        #: the state is x / alpha (else x)
        self.scaled = name == "edm"
        if name == "t":
            return
        try:
            sde.log_snr_inverse(torch.tensor(0.0, dtype=torch.float64))
        except NotImplementedError:
            raise ValueError(f"variable={name!r} maps the log-SNR back to t with the SDE's "
                             f"closed-form inverse (SDE.log_snr_inverse), which "
                             f"{type(sde).__name__} does not have; use variable='t'") from None
        if not float(sde.sigma(self.t_lo)) > 0.0:
            raise ValueError(f"variable={name!r} needs sigma(t) > 0 over the solve, but "
                             f"sigma({self.t_lo:g}) = 0 for {type(sde).__name__}; start at "
                             "t_eps > 0 or use variable='t'")

    def value(self, t: float) -> float:
        r"""$v(t)$ as a Python float (computed in float64)."""
        if self.name == "t":
            return float(t)
        u = -0.5 * float(self.sde.log_snr(torch.tensor(float(t), dtype=torch.float64)))
        return u if self.name == "log_snr" else math.exp(u)

    def time(self, v: Tensor) -> Tensor:
        r"""$t(v)$ for a tensor `v`, clamped into `t_range`."""
        if self.name == "t":
            return v
        lam = -2.0 * (v if self.name == "log_snr" else torch.log(v))
        return self.sde.log_snr_inverse(lam).clamp(self.t_lo, self.t_hi)

    def time_of_value(self, v: float) -> float:
        """$t(v)$ for a Python float (error messages name times `t`)."""
        return float(self.time(torch.tensor(float(v), dtype=torch.float64)))

    def coefficients(self, v: Tensor) -> tuple[Tensor, Coefficients, Tensor, Tensor]:
        r"""`(t, c, a, b)`: $t(v)$, `sde.coefficients(t)`, $a = w f$ and $b = w g^2/2$."""
        t = self.time(v)
        c = self.sde.coefficients(t)
        if self.name == "t":
            return t, c, c.f, 0.5 * c.g2
        b = c.sigma * c.sigma if self.name == "log_snr" else c.sigma * c.alpha
        return t, c, 2.0 * b * c.f / c.g2, b

    def _alpha(self, t: float) -> float:
        return float(self.sde.alpha(torch.tensor(float(t), dtype=torch.float64)))

    def to_state(self, x: Tensor, t: float) -> Tensor:
        r"""The integrated state for data `x` at time `t`: $x/\alpha(t)$ for `"edm"`, else `x`."""
        return x / self._alpha(t) if self.scaled else x

    def from_state(self, y: Tensor, t: float) -> Tensor:
        """The inverse of `to_state`."""
        return y * self._alpha(t) if self.scaled else y

    def breakpoints(self) -> tuple[float, ...]:
        """The SDE's breakpoints inside `t_range`, mapped to $v$."""
        return tuple(self.value(b) for b in self.sde.breakpoints if self.t_lo < b < self.t_hi)


class ProbabilityFlow:
    r"""The probability-flow ODE's vector field $h(x, t) = f(t)\,x - \tfrac12 g(t)^2
    s_\theta(x, t)$ of a model, as a callable `(t, x) -> dx/dt` for ODE integrators.

    `t` is a 0-d tensor already in the time range (integrators clamp it; see
    `scoresde.integrate`); it is cast to `x`'s dtype. One network evaluation per call.

    With `variable` (a [`FlowVariable`][scoresde.dynamics.FlowVariable]) the callable is
    `(v, y) -> dy/dv` instead: the same ODE in the variable `v` and its state `y`.
    """

    def __init__(self, model: ScoreModel, *, variable: FlowVariable | None = None,
                 **cond: Tensor) -> None:
        self.model, self.sde, self.cond = model, model.sde, cond
        self.variable = variable

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        if t.dtype != x.dtype:
            t = t.to(x.dtype)
        if self.variable is None:
            c = self.sde.coefficients(t)
            s = self.model.evaluate(x, t, c.alpha, c.sigma, "score", **self.cond)
            return drift_from_score(x, s, c.f, c.g2, probability_flow=True)
        t, c, a, b = self.variable.coefficients(t)
        if self.variable.scaled:                         # dy/dv = -(b / alpha) s(alpha y, t)
            s = self.model.evaluate(c.alpha * x, t, c.alpha, c.sigma, "score", **self.cond)
            return (-b / c.alpha) * s
        s = self.model.evaluate(x, t, c.alpha, c.sigma, "score", **self.cond)
        return a * x - b * s


class ProbabilityFlowWithDivergence:
    r"""The probability-flow ODE augmented with its divergence: a callable
    `(t, (x, l)) -> (h(x, t), q)` with $q_p = v_p^\top(\partial h/\partial x)v_p$ for each
    cotangent $v_p$, shape `(P, B)`.

    With `probes=None` the cotangents are the basis $e_1..e_D$ and their sum is the exact
    divergence (returned as one row, `P = 1`); with `probes` of shape `(P, B, *event)`,
    each row is one Hutchinson estimate (Hutchinson 1989; Grathwohl et al. 2019, FFJORD).

    One network forward per call (with `x` tracked by autograd) gives $s$; then
    vector-Jacobian products $v^\top\partial s/\partial x$ through the graph of that one
    forward, either one at a time (`retain_graph`) or batched (`is_grads_batched`, i.e.
    `torch.func.vmap`). On the CPU the loop is faster (measured, 1 thread, B = 1024, one
    forward plus the D backward passes of the exact divergence: 1.05-1.9x for D = 2-5 and
    3.7x for D = 20 on the Gaussian-mixture oracle, 1.1-1.7x on `MLPScoreNet`; the batched
    backward's D-fold intermediates leave the cache); on accelerators the batched form
    saves kernel launches and is kept, in chunks of at most `EXACT_MAX_ELEMS` elements.
    Reverse mode is used because forward mode (`torch.func.jvp`, one pass for both `s` and
    `J v`) measured slower than a forward plus a backward pass: 2.3-4x on the oracle,
    1.1-1.6x on `MLPScoreNet` (CPU, torch 2.13).

    The probe goes through the whole drift Jacobian, $f\|v\|^2 - \tfrac12 g^2
    v^\top(\partial s/\partial x)v$: its two parts nearly cancel where $p_t$ is close to
    the prior, so estimating only the score's part and adding $D f(t)$ exactly would be
    *worse* for Gaussian probes (measured: 8x the error on the 2-D oracle); for
    Rademacher probes $\|v\|^2 = D$ and the two coincide.

    `n_vjp` counts the vector-Jacobian products taken. The network must treat the samples
    of a batch independently (no batch statistics).

    With `variable` (a [`FlowVariable`][scoresde.dynamics.FlowVariable]) the callable is
    `(v, (y, l)) -> (dy/dv, q)` in that variable and its state, with
    $q_p = w\,v_p^\top(\partial h/\partial x)v_p$, $w = dt/dv$: the same integrand per
    probe as in `t`, so each $\ell^{(p)}$ is the same integral. `last_score` holds the
    score of the last call as a gradient with respect to the integrated state (for a
    goal-oriented error norm).
    """

    def __init__(self, model: ScoreModel, x: Tensor, probes: Tensor | None = None, *,
                 variable: FlowVariable | None = None, **cond: Tensor) -> None:
        self.model, self.sde, self.cond = model, model.sde, cond
        self.variable = variable
        self.probes = probes
        #: the score of the last evaluation, as a gradient with respect to the integrated
        #: state ($s$, or $\alpha s$ for the state $x/\alpha$)
        self.last_score: Tensor | None = None
        self.dtype = x.dtype
        b, self.d = x.shape[0], x[0].numel()
        self.n_vjp = 0
        # sum over cotangents of |v|^2, per sample: D for the basis; it multiplies f(t)
        self.sqnorm = (torch.full((1, b), float(self.d), dtype=x.dtype, device=x.device)
                       if probes is None else probes.reshape(probes.shape[0], b, -1).pow(2).sum(-1))
        per_max = 1 if x.device.type == "cpu" else max(1, EXACT_MAX_ELEMS // (b * self.d))
        if probes is None:  # the basis e_i, broadcast over the batch without copying
            eye = torch.eye(self.d, dtype=x.dtype, device=x.device)
            basis = eye.reshape((self.d, 1) + tuple(x.shape[1:])).expand((self.d,) + tuple(x.shape))
            per = per_max
        else:
            basis, per = probes, (1 if per_max == 1 else probes.shape[0])
        self.chunks = [(i, basis[i:i + per]) for i in range(0, basis.shape[0], per)]

    @staticmethod
    def _vjps(s: Tensor, x: Tensor, v: Tensor, retain: bool) -> Tensor:
        # rows v_p^T (ds/dx) for each cotangent v_p (backward passes, no extra forward)
        if v.shape[0] == 1:
            return torch.autograd.grad(s, x, v[0], retain_graph=retain)[0].unsqueeze(0)
        return torch.autograd.grad(s, x, v, retain_graph=retain, is_grads_batched=True)[0]

    def __call__(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        if t.dtype != self.dtype:
            t = t.to(self.dtype)
        if self.variable is None:
            x = state[0].detach()
            c = self.sde.coefficients(t)
            s, quad = self._score_and_quadratic(x, t, c)
            self.last_score = s
            drift = drift_from_score(x, s, c.f, c.g2, probability_flow=True)
            # v^T (dh/dx) v = f(t) |v|^2 - g^2/2 v^T (ds/dx) v, summed over the cotangents
            return drift, c.f * self.sqnorm - (0.5 * c.g2) * quad
        t, c, a, b = self.variable.coefficients(t)
        y = state[0].detach()
        scaled = self.variable.scaled
        x = c.alpha * y if scaled else y
        s, quad = self._score_and_quadratic(x, t, c)
        # the gradient of log p_t with respect to the state, kept for a goal-oriented error norm
        self.last_score = c.alpha * s if scaled else s
        drift = (-b / c.alpha) * s if scaled else a * x - b * s
        # w v^T (dh/dx) v with w = dt/dv, the same in every variable (FlowVariable)
        return drift, a * self.sqnorm - b * quad

    def _score_and_quadratic(self, x: Tensor, t: Tensor, c: Coefficients
                             ) -> tuple[Tensor, Tensor]:
        r"""One network forward at `(x, t)` with `x` tracked: the score (detached) and
        $\sum_p v_p^\top(\partial s/\partial x)v_p$ per row, shape `(P, B)`."""
        b, d = x.shape[0], self.d
        last = len(self.chunks) - 1
        with torch.enable_grad():
            xg = x.requires_grad_(True)
            s = self.model.evaluate(xg, t, c.alpha, c.sigma, "score", **self.cond)
            if not s.requires_grad:
                raise RuntimeError("the model's score does not depend differentiably on x "
                                   "(it is detached from autograd); the divergence needs "
                                   "d score / dx")
            if self.probes is None:
                quad = None
                for k, (i, v) in enumerate(self.chunks):
                    n = v.shape[0]
                    g = self._vjps(s, xg, v, retain=k < last).reshape(n, b, d)
                    # diagonal entries (ds_j/dx_j) for j in this chunk
                    part = (g[0, :, i] if n == 1
                            else torch.diagonal(g[:, :, i:i + n], dim1=0, dim2=2).sum(-1))
                    quad = part if quad is None else quad + part
                    self.n_vjp += n
                quad = quad.unsqueeze(0)                                       # (1, B)
            else:
                quads = []
                for k, (_, v) in enumerate(self.chunks):
                    g = self._vjps(s, xg, v, retain=k < last)
                    quads.append((g * v).reshape(v.shape[0], b, -1).sum(-1))
                    self.n_vjp += v.shape[0]
                quad = quads[0] if len(quads) == 1 else torch.cat(quads)      # (P, B)
        return s.detach(), quad


def tweedie_denoise(model: ScoreModel, x: Tensor, t_end: float, **cond: Tensor) -> Tensor:
    r"""Final denoising step at `t_end`: $\hat x_0 = (x + \sigma^2 s)/\alpha$ (Tweedie's
    formula; one network evaluation)."""
    t = torch.tensor(t_end, dtype=x.dtype, device=x.device)
    c = model.sde.coefficients(t)
    return model.evaluate(x, t, c.alpha, c.sigma, "x0", **cond)
