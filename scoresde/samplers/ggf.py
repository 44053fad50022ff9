r""""Gotta Go Fast": an adaptive reverse-SDE solver with the error controller of
Jolicoeur-Martineau, Li, Piché-Taillefer, Kachman & Mitliagkas 2021 ("Gotta go fast when
generating data with score-based models", Algorithm 1), for any SDE with linear drift.

One step of size $h > 0$ from time $t$ down to $t - h$, with the reverse-time drift
$b(x, t) = f(t)\,x - g(t)^2 s_\theta(x, t)$ and one Brownian increment $\Delta W \sim N(0, hI)$
shared by both stages:

$$x' = x - h\,b(x, t) + g(t)\,\Delta W,\qquad
\tilde x = x - h\,b(x', t - h) + g(t - h)\,\Delta W,\qquad
x'' = \tfrac12(x' + \tilde x),$$

Euler–Maruyama ($x'$) and the stochastic improved Euler step ($x''$). Their difference is the
error estimate, scaled per coordinate by
$\delta = \max(\epsilon_\text{abs}, \epsilon_\text{rel}\max(|x'|, |x'_\text{prev}|))$
($x'_\text{prev}$: the last accepted $x'$): $E = \text{RMS}((x' - x'')/\delta)$. The step is
accepted when $E \le 1$ (the state moves to $x''$, the extrapolation), and the next step is
$h \leftarrow \min(t - t_\text{end},\ \theta\,h\,E^{-r})$. Two evaluations per attempt; the solve
ends exactly at $t_\text{end}$.

**The noise on a rejected step** (option ``noise``):

- ``"brownian"`` (default): the increments are those of one Brownian path
  (``torchsde.BrownianInterval``, seeded from the generator), so a rejected step's noise is
  not discarded: the retry uses the Brownian bridge through it. The path does not depend on
  the step sizes, and the solution converges to the SDE's (strongly, hence in distribution)
  as the tolerances shrink. The whole batch shares the time and the step size; $E$ is the RMS
  over the batch.
- ``"resample"``: the paper's Algorithm 1 as written: every sample of the batch has its own
  time and step size ($E$ per sample), and each attempt draws fresh $z \sim N(0, I)$,
  $\Delta W = \sqrt h\,z$. Accepting a step depends on its noise ($x'$ enters the score's
  argument), so rejection filters the noise: on our exact targets the samples were biased
  (4000 samples: largest |z| of the moments 7-23 at ``rtol`` 0.2-0.02, against 0.6-2.6 with
  ``"brownian"``, and the bias does not shrink with the tolerance; docs/solvers.md,
  experiments/ggf_noise.py). Kept for comparison with the paper. Per-sample noise
  (``sample(..., seed=)``) is supported here (attempt $k$ of sample $i$ uses its draw
  $k + 1$), not with ``"brownian"`` (one path for the batch: a `SeedError`).

Options: ``rtol`` ($\epsilon_\text{rel}$, default 0.05, the paper's fast setting), ``atol``
($\epsilon_\text{abs}$, 0.0078, the paper's), ``safety`` $\theta = 0.9$, ``exponent``
$r = 0.9$, ``h_init`` = 0.01, ``max_num_steps`` attempts (10000; exceeding it is a
`RuntimeError`). With ``nfe=K`` (fixed grid) the improved Euler step $x''$ runs on every
interval of the grid without error control (fresh noise per step): $2n$ evaluations for $n$
steps. Stochastic; order 1 (weak).
"""

from __future__ import annotations

import math

import torch

from ..dynamics import drift_from_score
from ..models import ScoreModel
from ..rng import PerSampleNoise
from ..validation import bcast, check_choice, check_int, check_real, check_tolerances
from .base import (
    AdaptiveSolver,
    FixedGridSolver,
    NonFiniteWatch,
    SamplingError,
    SeedError,
    StepContext,
)
from .registry import register_solver

Tensor = torch.Tensor


@register_solver("ggf")
class GottaGoFast(FixedGridSolver, AdaptiveSolver):
    """Adaptive reverse-SDE solver with an Euler–Maruyama / improved-Euler error controller
    (Jolicoeur-Martineau et al. 2021); fixed grid: improved Euler, 2 evaluations per step."""

    order = 1.0
    stochastic = True
    cost_per_step = 2
    adaptive_capable = True
    comparison_specs = ({"adaptive": True},)

    def __init__(self, rtol: float = 0.05, atol: float = 0.0078, noise: str = "brownian",
                 safety: float = 0.9, exponent: float = 0.9, h_init: float = 0.01,
                 max_num_steps: int = 10_000) -> None:
        check_tolerances(rtol, atol)
        self.rtol, self.atol = float(rtol), float(atol)
        self.noise = check_choice("noise", noise, ("brownian", "resample"))
        self.safety = check_real("safety", safety, low=0.0, high=1.0, low_open=True)
        self.exponent = check_real("exponent", exponent, low=0.0, low_open=True)
        self.h_init = check_real("h_init", h_init, low=0.0, low_open=True)
        self.max_num_steps = check_int("max_num_steps", max_num_steps, 1)

    # ----- fixed grid -----------------------------------------------------------------------
    def step(self, ctx: StepContext, x: Tensor, i: int) -> Tensor:
        h = float(ctx.grid[i] - ctx.grid[i + 1])                 # the grid is on the host
        z = ctx.noise(x)
        x1 = torch.add(x, drift_from_score(x, ctx.score(x, i), ctx.f[i], ctx.g2[i]), alpha=-h)
        x1.add_(z, alpha=math.sqrt(ctx.g2[i] * h))
        x2 = torch.add(x, drift_from_score(x1, ctx.score(x1, i + 1), ctx.f[i + 1], ctx.g2[i + 1]),
                       alpha=-h)
        x2.add_(z, alpha=math.sqrt(ctx.g2[i + 1] * h))
        return x1.add_(x2).mul_(0.5)

    # ----- adaptive -------------------------------------------------------------------------
    @staticmethod
    def _drift(model: ScoreModel, x: Tensor, t: Tensor, watch: NonFiniteWatch,
               cond: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(reverse drift f x - g^2 s at the times ``t`` (float64, shape () or (B,)), g^2,
        whether a score was NaN/Inf): one evaluation; ``watch`` keeps the first bad time."""
        c = model.sde.coefficients(t)
        alpha, sigma = bcast(c.alpha.to(x.dtype), x), bcast(c.sigma.to(x.dtype), x)
        score = model.evaluate(x, t.to(x.dtype), alpha, sigma, "score", **cond)
        bad = ~torch.isfinite(score.reshape(score.shape[0], -1)).all(dim=1)
        watch(torch.where(bad, t, torch.full_like(t, math.inf)).min(), score)
        g2 = c.g2.to(x.dtype)
        return drift_from_score(x, score, c.f.to(x.dtype), g2), g2, bad.any()

    def _two_stages(self, model: ScoreModel, x: Tensor, t: Tensor, t2: Tensor, h: Tensor,
                    dw: Tensor, watch: NonFiniteWatch, cond: dict[str, Tensor]
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """(x', x'', any NaN/Inf score) of one attempt from ``t`` to ``t2 = t - h``."""
        hx = bcast(h.to(x.dtype), x)
        d1, g2, bad1 = self._drift(model, x, t, watch, cond)
        x1 = x - hx * d1 + bcast(g2.sqrt(), x) * dw
        d2, g2b, bad2 = self._drift(model, x1, t2, watch, cond)
        x2 = 0.5 * (x1 + x - hx * d2 + bcast(g2b.sqrt(), x) * dw)
        return x1, x2, bad1 | bad2

    def _scaled_error(self, x1: Tensor, x2: Tensor, x_prev: Tensor) -> Tensor:
        """Per-sample mean of ((x' - x'')/delta)^2, float64."""
        delta = torch.clamp(self.rtol * torch.maximum(x1.abs(), x_prev.abs()), min=self.atol)
        return ((x1 - x2) / delta).reshape(x1.shape[0], -1).pow(2).mean(dim=1).to(torch.float64)

    def _nan_error(self, model: ScoreModel, t_end: float, watch: NonFiniteWatch) -> SamplingError:
        return SamplingError(f"solver 'ggf' produced NaN/Inf in the adaptive solve from "
                             f"t={model.sde.T} to t={t_end}: first non-finite evaluation at "
                             f"t = {watch.time:.6g}")

    def _too_many(self, t_end: float, reached: float) -> RuntimeError:
        return RuntimeError(f"solver 'ggf' did not reach t_end={t_end} within max_num_steps="
                            f"{self.max_num_steps} attempts (stopped at t={reached:.6g}); "
                            "loosen rtol/atol or raise max_num_steps")

    def solve_adaptive(self, model: ScoreModel, x: Tensor, t_end: float,
                       generator: torch.Generator | None, *,
                       cond: dict[str, Tensor] | None = None,
                       noise: PerSampleNoise | None = None) -> Tensor:
        """The adaptive solve; ``noise`` (per-sample noise, ``sample(..., seed=)``) only with
        ``noise="resample"``, whose samples have their own times and steps: attempt ``k`` of
        sample ``i`` uses draw ``k + 1`` of sample ``i``."""
        cond = dict(cond) if cond else {}
        if self.noise == "resample":
            return self._solve_resample(model, x, t_end, generator, cond, noise)
        if noise is not None:
            raise SeedError("ggf's adaptive solve with noise='brownian' draws one Brownian path "
                             "and takes one step size for the whole batch, so a sample cannot "
                             "have noise of its own (seed=): use noise='resample', a fixed "
                             "nfe, or generator=")
        import torchsde  # imported on first use: `import scoresde` stays light

        T = float(model.sde.T)
        entropy = int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                    device=generator.device if generator is not None else "cpu"))
        # the path in tau = T - t, which increases as the solve goes on
        bm = torchsde.BrownianInterval(t0=0.0, t1=T - t_end, size=x.shape, dtype=x.dtype,
                                       device=x.device, entropy=entropy)
        t, h, x_prev = T, min(self.h_init, T - t_end), x
        watch = NonFiniteWatch()
        f64 = {"dtype": torch.float64, "device": x.device}
        for _ in range(self.max_num_steps):
            h = min(h, t - t_end)
            t2 = t_end if h >= t - t_end else t - h
            dw = bm(T - t, T - t2)
            x1, x2, bad = self._two_stages(model, x, torch.tensor(t, **f64), torch.tensor(t2, **f64),
                                           torch.tensor(t - t2, **f64), dw, watch, cond)
            err2, bad = torch.stack([self._scaled_error(x1, x2, x_prev).mean(),
                                     bad.to(torch.float64)]).tolist()              # one sync
            if bad:
                raise self._nan_error(model, t_end, watch)
            err = math.sqrt(err2)
            if err <= 1.0:
                x, x_prev, t = x2, x1, t2
                if t == t_end:
                    return x
            h = self.safety * h * max(err, 1e-10) ** -self.exponent
        raise self._too_many(t_end, t)

    def _solve_resample(self, model: ScoreModel, x: Tensor, t_end: float,
                        generator: torch.Generator | None, cond: dict[str, Tensor],
                        noise: PerSampleNoise | None = None) -> Tensor:
        """The paper's Algorithm 1: per-sample times and steps, fresh noise every attempt."""
        b = x.shape[0]
        t = torch.full((b,), float(model.sde.T), dtype=torch.float64, device=x.device)
        h = torch.full_like(t, self.h_init)
        x_prev = x
        watch = NonFiniteWatch()
        for k in range(self.max_num_steps):
            left = t - t_end
            h = torch.minimum(h, left)
            active = left > 0
            t2 = torch.where(h >= left, torch.full_like(t, t_end), t - h)   # lands on t_end exactly
            z = (torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                 if noise is None else noise.normal(x.shape, k + 1, dtype=x.dtype, device=x.device))
            dw = bcast(h.to(x.dtype).sqrt(), x) * z
            x1, x2, bad = self._two_stages(model, x, t, t2, h, dw, watch, cond)
            err = self._scaled_error(x1, x2, x_prev).sqrt()
            accept = active & (err <= 1.0)
            keep = bcast(accept, x)
            x, x_prev = torch.where(keep, x2, x), torch.where(keep, x1, x_prev)
            t = torch.where(accept, t2, t)
            h = torch.where(active, self.safety * h * err.clamp(min=1e-10) ** -self.exponent,
                            torch.zeros_like(h))
            running, bad = torch.stack([(t > t_end).any(), bad]).tolist()          # one sync
            if bad:
                raise self._nan_error(model, t_end, watch)
            if not running:
                return x
        raise self._too_many(t_end, float(t.max()))
