r"""The reverse-time SDE through `torchsde.sdeint` (Li et al. 2020), reverse time handled once.

torchsde integrates forward in time, so with $\tau = T - t$ the reverse SDE
$dx = [f x - g^2 s_\theta]\,dt + g\,d\bar w$ ($dt < 0$) becomes

$$dx = -[f(T-\tau)\,x - g(T-\tau)^2\,s_\theta(x, T-\tau)]\,d\tau + g(T-\tau)\,dW_\tau,$$

integrated over $\tau \in [0, T - t_\text{end}]$. The noise is diagonal and additive
($g$ does not depend on $x$), so Itô and Stratonovich forms coincide and every torchsde
method applies. With additive noise the strong orders are: ``euler`` 1, ``milstein`` 1
(identical to Euler here), ``srk`` 1.5 (4 evaluations per step), ``reversible_heun``
(Kidger et al. 2021) 1 (one evaluation per step plus one at the start), ``midpoint`` and
``heun`` 1 (2 per step). Fixed ``nfe`` runs uniform steps ($dt = (T - t_\text{end})/n$); with
``nfe=None`` torchsde adapts ``dt`` to ``rtol``/``atol``. The Brownian path is a
`torchsde.BrownianInterval` seeded from the caller's `torch.Generator`; one path for the
whole batch, so per-sample noise (``sample(..., seed=)``) is not supported (a `SeedError`).
"""

from __future__ import annotations

import warnings

import torch

from ..dynamics import drift_from_score
from ..models import ScoreModel
from ..validation import check_choice, check_tolerances
from .base import AdaptiveSolver, NonFiniteWatch, SamplingError, nan_at_step
from .registry import register_solver

Tensor = torch.Tensor

#: (SDE type, network evaluations per step, extra evaluations at the start, strong order
#: for additive noise). g never calls the network; repeated drift evaluations at the same
#: stage tensor are remembered (see `_ReverseSDE.f`), so SRK costs its 4 distinct stages.
METHODS = {
    "euler": ("ito", 1, 0, 1.0), "milstein": ("ito", 1, 0, 1.0), "srk": ("ito", 4, 0, 1.5),
    "reversible_heun": ("stratonovich", 1, 1, 1.0), "midpoint": ("stratonovich", 2, 0, 1.0),
    "heun": ("stratonovich", 2, 0, 1.0),
}


class _ReverseSDE(torch.nn.Module):
    noise_type = "diagonal"

    def __init__(self, model: ScoreModel, shape: torch.Size, sde_type: str, t_end: float,
                 cond: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        self.model, self.shape, self.sde_type = model, shape, sde_type
        self.cond = dict(cond) if cond else {}
        self.watch = NonFiniteWatch()
        self.T, self.t_end = model.sde.T, t_end
        self._memo: list[tuple[Tensor, Tensor]] = []

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        # torchsde's SRK re-evaluates the drift of earlier stages at the very same stage
        # tensors; remember the last few results by tensor identity instead of paying again
        for y_seen, out in self._memo:
            if y_seen is y:
                return out
        # T - tau can round an ulp below t_end (SRK's stage times): keep t in [t_end, T]
        t = (self.T - tau).clamp(min=self.t_end, max=self.T)
        x = y.reshape(self.shape)
        if t.dtype != x.dtype:
            t = t.to(x.dtype)
        c = self.model.sde.coefficients(t)
        score = self.watch(t, self.model.evaluate(x, t, c.alpha, c.sigma, "score", **self.cond))
        out = -drift_from_score(x, score, c.f, c.g2).reshape(y.shape)
        self._memo = [(y, out)] + self._memo[:7]
        return out

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        t = (self.T - tau).clamp(min=self.t_end, max=self.T)
        # tau is float64 whatever y's dtype: g must not promote a float32 state
        return self.model.sde.diffusion(t).to(y.dtype).expand(y.shape)


@register_solver("torchsde")
class TorchSDE(AdaptiveSolver):
    """The reverse SDE with a torchsde method; fixed uniform steps or adaptive."""

    stochastic = True

    def __init__(self, method: str = "euler", rtol: float = 1e-3, atol: float = 1e-3,
                 dt_min: float = 1e-5) -> None:
        check_choice("method", method, sorted(METHODS))
        check_tolerances(rtol, atol)
        self.method, self.rtol, self.atol, self.dt_min = method, rtol, atol, dt_min
        self.sde_type, self.cost_per_step, self.extra_evals, self.strong_order = METHODS[method]
        # declared `order`: the strong order under additive noise, a lower bound of the weak one
        self.order = self.strong_order

    def nfe_for_steps(self, n_steps: int) -> int:
        return self.cost_per_step * n_steps + self.extra_evals

    def cost_formula(self) -> str:
        extra = f" + {self.extra_evals}" if self.extra_evals else ""
        return f"{self.cost_per_step}n{extra} evaluations for n steps"

    def _run(self, model: ScoreModel, x: Tensor, t_end: float, generator: torch.Generator | None,
             dt: float | None, cond: dict[str, Tensor] | None = None) -> Tensor:
        import torchsde  # imported on first use: `import scoresde` stays light

        y0 = x.reshape(x.shape[0], -1)
        span = model.sde.T - t_end
        entropy = int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                    device=generator.device if generator is not None else "cpu"))
        bm = torchsde.BrownianInterval(
            t0=0.0, t1=span, size=y0.shape, dtype=y0.dtype, device=y0.device, entropy=entropy,
            levy_area_approximation="space-time" if self.method == "srk" else "none")
        # times in float64 whatever the state's dtype, so that n steps of dt add up to span
        ts = torch.tensor([0.0, span], dtype=torch.float64, device=y0.device)
        sde = _ReverseSDE(model, x.shape, self.sde_type, t_end, cond)
        kw = dict(method=self.method, bm=bm)
        if dt is None:
            kw.update(adaptive=True, rtol=self.rtol, atol=self.atol, dt=span / 100,
                      dt_min=self.dt_min)
        else:
            kw.update(adaptive=False, dt=dt)
        with warnings.catch_warnings():
            # torchsde warns about adaptive Euler with non-additive noise; ours is additive
            # (g does not depend on x), declared "diagonal" only to keep g of shape (B, D)
            warnings.filterwarnings("ignore", message=".*non-additive noise.*")
            try:
                out = torchsde.sdeint(sde, y0, ts, **kw)[-1].reshape(x.shape)
            except AssertionError as e:
                # torchsde asserts ("Found nans in the error estimate") in adaptive mode
                if sde.watch.time is None:
                    raise
                raise SamplingError(self._nan_message(model, t_end, dt, sde.watch)
                                    + f" ({e})") from None
        if not bool(torch.isfinite(out).all()):
            raise SamplingError(self._nan_message(model, t_end, dt, sde.watch))
        return out

    def _nan_message(self, model: ScoreModel, t_end: float, dt: float | None,
                     watch: NonFiniteWatch) -> str:
        T = model.sde.T
        msg = f"solver 'torchsde' ({self.method}) produced NaN/Inf"
        if watch.time is None:
            return f"{msg} between t={T} and t={t_end}"
        if dt is None:
            return (f"{msg} in the adaptive solve from t={T} to t={t_end}: first non-finite "
                    f"evaluation at t = {watch.time:.6g}")
        # evaluations come in order: `extra_evals` at the start, then `cost_per_step` per step
        n = max(1, round((T - t_end) / dt))
        h = (T - t_end) / n
        k = min(max(0, watch.index - self.extra_evals) // self.cost_per_step, n - 1)
        return str(nan_at_step(f"'torchsde' ({self.method})", k, n, T - k * h, T - (k + 1) * h))

    def solve(self, model: ScoreModel, x: Tensor, grid: Tensor,
              generator: torch.Generator | None = None, *, trajectory: bool = False,
              progress: bool = False, cond: dict[str, Tensor] | None = None,
              callback: object = None) -> tuple[Tensor, Tensor | None]:
        """The fixed-step solve (uniform steps); ``cond`` goes to every network call.
        torchsde owns its loop, so a ``callback`` is a `ValueError`: use a fixed-grid solver
        (e.g. ``euler_maruyama``, the same method)."""
        if callback is not None:
            raise ValueError("the 'torchsde' solver runs its own loop and takes no callback; use a "
                             "fixed-grid solver such as 'euler_maruyama' (the same Euler method)")
        if float(grid[0]) != model.sde.T:
            raise ValueError(f"the 'torchsde' solver starts at T = {model.sde.T}; a grid starting at "
                             f"t = {float(grid[0])!r} needs a fixed-grid solver or 'pf_ode'")
        n = grid.shape[0] - 1
        steps = grid[:-1] - grid[1:]
        if not torch.allclose(steps, steps.mean().expand(n), rtol=1e-6, atol=1e-12):
            raise ValueError("the 'torchsde' solver takes uniform steps only (grid='uniform')")
        if trajectory:
            raise ValueError("the 'torchsde' solver does not record trajectories")
        span = float(grid[0] - grid[-1])
        # a hair above span/n so that rounding never adds an (n+1)-th sliver of a step:
        # torchsde clips the last step to the end time
        return self._run(model, x, float(grid[-1]), generator, dt=span / n * (1 + 1e-9),
                         cond=cond), None

    def solve_adaptive(self, model: ScoreModel, x: Tensor, t_end: float,
                       generator: torch.Generator | None, *,
                       cond: dict[str, Tensor] | None = None) -> Tensor:
        return self._run(model, x, t_end, generator, dt=None, cond=cond)
