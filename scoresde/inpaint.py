r"""Inpainting and imputation with an unconditional score model: fill in the unknown
coordinates of `x_known` (those where `mask` is False) so that the result is a draw from
$p(x_u \mid x_o)$, by one of three methods.

- `"replace"` (Song et al. 2021, "Score-based generative modeling through stochastic
  differential equations", App. I.2; score_sde's `get_pc_inpainter`): after every solver
  step to time $t$, the known coordinates are replaced by a fresh forward draw
  $\alpha(t)\,x_o + \sigma(t)\,z$. Cheap, but the unknown coordinates only see the known
  ones through the score of the *joint*: the conditional is not sampled exactly, and samples
  can land where $p(x_u \mid x_o)$ has (almost) no mass (docs/conditional.md measures it).
- `"repaint"` (Lugmayr et al. 2022, "RePaint: inpainting using denoising diffusion
  probabilistic models"): replacement, plus resampling: the grid is walked in blocks of
  `jump_length` steps; each block is solved `resample` times, and between two passes the
  state is noised back from the block's end time $t_b$ to its start $t_a$ with the forward
  transition $x_a = (\alpha_a/\alpha_b)\,x_b + \sqrt{\sigma_a^2 - (\alpha_a/\alpha_b)^2
  \sigma_b^2}\;z$, which lets the unknown part harmonise with the known one. Each pass
  costs its steps, so at a fixed NFE budget more resampling means a coarser grid.
- `"dps"` (Chung et al. 2023, "Diffusion posterior sampling for general noisy inverse
  problems", Alg. 1): no replacement; after each step from $x_i$ the state moves along
  $-\zeta_i\,\nabla_{x_i}\|m\odot(x_\text{known} - \hat x_0(x_i))\|^2$, the gradient taken
  through Tweedie's $\hat x_0 = (x_i - \sigma_i\hat\varepsilon)/\alpha_i$ of the step's own
  network evaluation (one backward pass per step, no extra NFE), with
  $\zeta_i = \zeta/\|m\odot(x_\text{known} - \hat x_0)\|$ per sample (`normalize=True`,
  the paper's choice) or $\zeta_i = \zeta$.

Every method ends with Tweedie's denoising step (1 NFE) and returns the known coordinates
exactly equal to `x_known`. `"replace"` and `"dps"` run through
[`sample`][scoresde.samplers.sampling.sample] with a `callback`, so they work with every
solver that takes one (the fixed-grid solvers and `pf_ode` with a fixed budget);
`"repaint"` drives a fixed-grid solver's steps itself (a multistep solver restarts its
history at each jump back; with `resample=1` it is `"replace"` draw for draw). `"dps"` uses
the gradient of the first network evaluation of each step, at $(x_i, t_i)$ for every
built-in fixed-grid solver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .dynamics import tweedie_denoise
from .models import ScoreModel, check_model
from .samplers import (
    BudgetError,
    FixedGridSolver,
    SamplingError,
    Solver,
    TimeGrid,
    get_grid,
    make_solver,
    sample,
)
from .validation import bcast, check_choice, check_cond, check_generator, check_int, check_real

Tensor = torch.Tensor

__all__ = ["inpaint", "InpaintResult", "METHODS", "check_mask"]

#: the inpainting methods
METHODS = ("replace", "repaint", "dps")


@dataclass
class InpaintResult:
    """What [`inpaint`][scoresde.inpaint.inpaint] returns: `x` (the completed samples, equal
    to `x_known` where `mask` is True), `nfe` (network evaluations counted by the model,
    resampling and the final denoising step included), `n_vjp` (backward passes: one per
    step for `"dps"`, else 0), `times` (the base time grid), `x_T` (the starting noise),
    `method`, and `solver`."""

    x: Tensor
    nfe: int
    n_vjp: int
    times: Tensor
    x_T: Tensor
    method: str
    solver: Solver


def check_mask(mask: object, like: Tensor, name: str = "mask") -> Tensor:
    """A bool mask broadcast to the shape of `like` (True = known), on its device.

    **Raises:** `TypeError` for a non-tensor or a non-bool tensor; `ValueError` for a shape
    that does not broadcast to `like`'s."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a bool tensor (True = known), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = known), got dtype {mask.dtype}; "
                        "use mask.bool() or a comparison")
    ms, ls = tuple(mask.shape), tuple(like.shape)
    # (by hand: torch.broadcast_shapes imports sympy on first use, seconds)
    if len(ms) > len(ls) or any(m not in (1, n) for m, n in
                                zip(ms, ls[len(ls) - len(ms):], strict=True)):
        raise ValueError(f"{name} of shape {ms} does not broadcast to the data's shape {ls}")
    return mask.to(like.device).expand(like.shape)


class _Replace:
    """Replace the known coordinates by a fresh forward draw at the time reached."""

    def __init__(self, model: ScoreModel, x_known: Tensor, mask: Tensor,
                 generator: torch.Generator | None) -> None:
        self.sde, self.x_known, self.mask, self.generator = model.sde, x_known, mask, generator

    def __call__(self, i: int, t: float, x: Tensor) -> Tensor:
        c = self.sde.coefficients(torch.tensor(t, dtype=torch.float64))
        z = torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        return torch.where(self.mask, float(c.alpha) * self.x_known + float(c.sigma) * z, x)


class _DPSNet(nn.Module):
    """The base model's network call; when armed, it also takes the gradient of
    ||m * (x_known - x0_hat)||^2 with respect to x through that same evaluation."""

    def __init__(self, model: ScoreModel, x_known: Tensor, mask: Tensor) -> None:
        super().__init__()
        self.model, self.x_known, self.mask = model, x_known, mask
        self.armed = True
        self.grad: Tensor | None = None
        self.resid: Tensor | None = None
        self.n_vjp = 0

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        if not self.armed:
            return self.model(x, t, **cond)
        self.armed = False
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = self.model(xg, t, **cond)
            c = self.model.sde.coefficients(t)
            x0 = self.model.convert(out, xg, bcast(c.alpha.to(x.dtype), x),
                                    bcast(c.sigma.to(x.dtype), x), "x0")
            r = torch.where(self.mask, self.x_known - x0, torch.zeros_like(x0))
            sq = r.reshape(x.shape[0], -1).pow(2).sum(1)
            self.grad = torch.autograd.grad(sq.sum(), xg)[0]
        self.resid = sq.detach().sqrt()
        self.n_vjp += 1
        return out.detach()


class _DPSModel(ScoreModel):
    def __init__(self, model: ScoreModel, x_known: Tensor, mask: Tensor) -> None:
        super().__init__(_DPSNet(model, x_known, mask), model.sde, model.prediction)
        self.evals_per_call = model.evals_per_call

    @property
    def device(self) -> torch.device:
        return self.net.model.device


class _DPSStep:
    """After step i: x - zeta_i * grad (the gradient taken at the step's start)."""

    def __init__(self, net: _DPSNet, zeta: float, normalize: bool, t_last: float) -> None:
        self.net, self.zeta, self.normalize, self.t_last = net, zeta, normalize, t_last

    def __call__(self, i: int, t: float, x: Tensor) -> Tensor | None:
        grad, net = self.net.grad, self.net
        net.grad = None
        net.armed = t > self.t_last           # no gradient for the final denoising step
        if grad is None:
            return None
        step = self.zeta / net.resid.clamp(min=1e-12) if self.normalize else \
            torch.full((x.shape[0],), self.zeta, dtype=x.dtype, device=x.device)
        return x - bcast(step.to(x.dtype), x) * grad


def _repaint_cost(slv: FixedGridSolver, n: int, jump: int, resample: int, per_call: int,
                  denoise: bool) -> int:
    """Network evaluations of RePaint on n grid steps (see `_blocks`)."""
    return per_call * (sum(resample * slv.nfe_for_steps(b - a) for a, b in _blocks(n, jump, resample))
                       + int(denoise))


def _blocks(n: int, jump: int, resample: int) -> list[tuple[int, int]]:
    """The grid-index blocks `(a, b)` solved `resample` times each (one block if no resampling)."""
    if resample == 1:
        return [(0, n)]
    return [(a, min(a + jump, n)) for a in range(0, n, jump)]


def _repaint_steps(slv: FixedGridSolver, nfe: int, jump: int, resample: int, per_call: int,
                   denoise: bool) -> int:
    """The number of grid steps whose RePaint cost is exactly `nfe`, else `BudgetError`."""
    def cost(n: int) -> int:
        return _repaint_cost(slv, n, jump, resample, per_call, denoise)

    if cost(1) > nfe:
        n = 0
    else:
        lo, hi = 1, 2
        while cost(hi) <= nfe:
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if cost(mid) <= nfe else (lo, mid)
        n = lo
    if n == 0 or cost(n) != nfe:
        near = [cost(k) for k in range(max(1, n - 2), n + 4)]
        lower = [k for k in near if k < nfe][-3:]
        higher = [k for k in near if k > nfe][:3]
        raise BudgetError(f"RePaint with solver {slv.name!r}, resample={resample}, "
                          f"jump_length={jump} cannot use exactly nfe={nfe} (each block of "
                          f"{jump} steps is solved {resample} times, {slv.cost_formula()} per "
                          f"pass, + 1 for the final denoising step); the nearest budgets it "
                          f"can meet are {lower + higher}")
    return n


def inpaint(model: ScoreModel, x_known: Tensor, mask: Tensor, *,
            solver: str | Solver = "euler_maruyama", nfe: int = 100, method: str = "replace",
            generator: torch.Generator | None = None, x_T: Tensor | None = None,
            t_end: float | None = None, grid: str | TimeGrid | None = None,
            cond: Mapping[str, Tensor] | None = None, resample: int = 1, jump_length: int = 1,
            zeta: float = 1.0, normalize: bool = True, progress: bool = False,
            **options: object) -> InpaintResult:
    r"""Complete `x_known` where `mask` is False by sampling with `model` (module docstring).

    **Arguments:**

    - `model`: an (unconditional or conditional) `ScoreModel` of the joint distribution.
    - `x_known`: shape `(B, *event_shape)`, floating; only its entries where `mask` is True
      are read (the others may hold anything, NaN included). Its dtype and device are used.
    - `mask`: a bool tensor broadcastable to `x_known` (True = known), e.g. of the event
      shape for one mask shared by the batch.
    - `solver`, `nfe`, `generator`, `x_T`, `t_end`, `grid`, `cond`, `**options`: as in
      [`sample`][scoresde.samplers.sampling.sample]; `nfe` counts every network evaluation
      (RePaint's resampling passes and the final denoising step included).
    - `method`: `"replace"`, `"repaint"` or `"dps"`.
    - `resample` (RePaint's $r$, passes per block) and `jump_length` (its block length $j$,
      in grid steps): only for `"repaint"`.
    - `zeta`, `normalize`: DPS's step size $\zeta \ge 0$ and whether it is divided by the
      residual norm per sample; only for `"dps"`.

    **Returns:** an [`InpaintResult`][scoresde.inpaint.InpaintResult].

    **Raises:** `TypeError`/`ValueError` for a wrong mask (not bool, not broadcastable) or
    other argument; `BudgetError` for a budget the method and solver cannot meet exactly;
    `SamplingError` for NaN/Inf.
    """
    check_model(model)
    check_choice("method", method, METHODS)
    if not isinstance(x_known, Tensor) or not x_known.is_floating_point():
        what = f"a {x_known.dtype} tensor" if isinstance(x_known, Tensor) else type(x_known).__name__
        raise TypeError(f"x_known must be a floating-point tensor (B, *event_shape), got {what}")
    if x_known.dim() < 2:
        raise ValueError(f"x_known must have shape (B, *event_shape), got {tuple(x_known.shape)}")
    m = check_mask(mask, x_known)
    known = torch.where(m, x_known, torch.zeros_like(x_known))
    if not bool(torch.isfinite(known).all()):
        raise ValueError("x_known must be finite where mask is True")
    check_generator(generator)
    resample = check_int("resample", resample, 1)
    jump_length = check_int("jump_length", jump_length, 1)
    zeta = check_real("zeta", zeta, low=0.0)
    if method != "repaint" and (resample != 1 or jump_length != 1):
        raise ValueError(f"resample and jump_length are RePaint's (method='repaint'), not "
                         f"method={method!r}'s")
    if method != "dps" and (zeta != 1.0 or normalize is not True):
        raise ValueError(f"zeta and normalize are DPS's (method='dps'), not method={method!r}'s")
    if x_T is not None and (not isinstance(x_T, Tensor) or x_T.shape != x_known.shape):
        shape = tuple(x_T.shape) if isinstance(x_T, Tensor) else type(x_T).__name__
        raise ValueError(f"x_T must have x_known's shape {tuple(x_known.shape)}, got {shape}")
    if x_T is None:
        x_T = model.sde.prior_sample(tuple(x_known.shape), generator, dtype=x_known.dtype,
                                     device=x_known.device)
    cond = check_cond(cond, x_known.shape[0])
    kw = dict(nfe=nfe, generator=generator, x_T=x_T, t_end=t_end, grid=grid, cond=cond,
              progress=progress, **options)

    if method == "replace":
        res = sample(model, solver=solver,
                     callback=_Replace(model, known, m, generator), **kw)
        return InpaintResult(torch.where(m, known, res.x), res.nfe, 0, res.times, x_T, method,
                             res.solver)
    if method == "dps":
        dps = _DPSModel(model, known, m)
        t_last = (float(grid[-1]) if isinstance(grid, Tensor) else
                  model.sde.sample_eps if t_end is None else float(t_end))
        res = sample(dps, solver=solver, callback=_DPSStep(dps.net, zeta, normalize, t_last),
                     **kw)
        return InpaintResult(torch.where(m, known, res.x), res.nfe, dps.net.n_vjp, res.times,
                             x_T, method, res.solver)
    return _repaint(model, known, m, solver, nfe, generator, x_T, t_end, grid, cond, resample,
                    jump_length, options)


def _repaint(model: ScoreModel, known: Tensor, m: Tensor, solver: str | Solver, nfe: int,
             generator: torch.Generator | None, x_T: Tensor, t_end: float | None,
             grid: str | TimeGrid | None, cond: dict[str, Tensor], resample: int, jump: int,
             options: Mapping[str, object]) -> InpaintResult:
    slv = make_solver(solver, **options)
    if not isinstance(slv, FixedGridSolver):
        raise ValueError(f"method='repaint' steps a fixed-grid solver itself; {slv.name!r} is not "
                         "one (use e.g. 'euler_maruyama', 'ancestral' or 'ddim')")
    if isinstance(grid, Tensor):
        raise TypeError("method='repaint' takes a grid name or TimeGrid, not an explicit tensor")
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise TypeError(f"nfe must be an integer, got {nfe!r}")
    sde = model.sde
    t_end = sde.sample_eps if t_end is None else float(t_end)
    if not 0.0 < t_end < sde.T:
        raise ValueError(f"t_end must lie in (0, T) = (0, {sde.T}), got {t_end}")
    n = _repaint_steps(slv, nfe, jump, resample, model.evals_per_call, True)
    times = get_grid(slv.default_grid if grid is None else grid)(sde, n, t_end)
    tl = times.tolist()
    coef = sde.coefficients(times.to(torch.float64))
    alpha, sigma = coef.alpha.tolist(), coef.sigma.tolist()
    replace = _Replace(model, known, m, generator)
    start = model.n_evals
    x = x_T
    with torch.no_grad():
        for a, b in _blocks(n, jump, resample):
            for r in range(resample):
                ctx = slv.start(model, x, times[a:b + 1], generator, cond=cond)
                for i in range(b - a):
                    x = replace(a + i, tl[a + i + 1], slv.step(ctx, x, i))
                if r < resample - 1:       # forward transition from t_b back up to t_a
                    ratio = alpha[a] / alpha[b]
                    std = max(sigma[a] ** 2 - ratio ** 2 * sigma[b] ** 2, 0.0) ** 0.5
                    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                    x = ratio * x + std * z
        if not bool(torch.isfinite(x).all()):
            raise SamplingError(f"inpaint (repaint, solver {slv.name!r}) produced NaN/Inf")
        x = tweedie_denoise(model, x, t_end, **cond)
    used = model.n_evals - start
    if used != nfe:
        raise RuntimeError(f"internal NFE accounting error: RePaint declared {nfe} evaluations "
                           f"but the model counted {used}")
    return InpaintResult(torch.where(m, known, x), used, 0, times, x_T, "repaint", slv)

