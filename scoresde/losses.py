r"""Denoising score matching (DSM) and DDPM's simple loss.

DSM (Vincent 2011; Song et al. 2021, eq. 7) with weighting $w(t)$:

$$
\mathcal L(\theta) = \mathbb E_{t}\,\mathbb E_{x_0, \varepsilon}\,
w(t)\,\big\| s_\theta(x_t, t) + \varepsilon/\sigma(t) \big\|^2
= \mathbb E\, \frac{w(t)}{\sigma(t)^2}\,\big\|\hat\varepsilon_\theta(x_t, t) - \varepsilon\big\|^2,
$$

with $x_t = \alpha x_0 + \sigma\varepsilon$ and $t \sim U(\epsilon, T)$.
Reduction (docs/math.md, "Denoising score matching"): the squared norm is replaced by the
**mean** over data dimensions, then the mean over the batch; there is no ½ factor. Weightings:

- `"sigma2"`: $w = \sigma^2$, so the loss is $\|\hat\varepsilon_\theta - \varepsilon\|^2$:
  DDPM's $L_\text{simple}$ (Ho et al. 2020);
- `"likelihood"`: $w = g(t)^2$ (Song, Durkan, Murray & Ermon 2021, "Maximum
  likelihood training of score-based diffusion models"); $w/\sigma^2 = g^2/\sigma^2 =
  -\lambda'(t)$ for every SDE here (because $g^2 = d\sigma^2/dt - 2f\sigma^2$);
- `"none"`: $w = 1$.

With `importance_sampling=True` (likelihood weighting only) `t` is drawn with density
$q(t) \propto -\lambda'(t)$ by inverting the log-SNR, and each sample is weighted by
$(\lambda(\epsilon) - \lambda(T))/(T - \epsilon)$, so the estimator has the same
expectation as the uniform one but lower variance.

**Conditioning.** Both losses take `cond`, a dict of tensors with batch dimension `B`
passed to the network as keyword arguments ($\hat\varepsilon_\theta(x_t, t, c)$, e.g.
`cond={"y": labels}`), and `cond_drop` $= p$: each sample's condition is replaced,
independently with probability $p$, by the null condition $\varnothing$, so one network
learns both $\hat\varepsilon_\theta(x_t, t, c)$ and $\hat\varepsilon_\theta(x_t, t,
\varnothing)$, the two scores that classifier-free guidance combines (Ho & Salimans 2022,
Algorithm 1). See [`drop_cond`][scoresde.losses.drop_cond].
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch

from .models import ScoreModel
from .schedules import DiscreteSchedule
from .validation import as_time, bcast, check_batch, check_choice, check_cond, check_real

Tensor = torch.Tensor

__all__ = ["dsm_loss", "ddpm_loss", "WEIGHTINGS", "sample_time", "drop_cond", "resolve_null_cond"]

WEIGHTINGS = ("sigma2", "likelihood", "none")
_REDUCTIONS = ("mean", "none")


def _noise_like(x0: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if noise is None:
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    return noise


def _per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).reshape(a.shape[0], -1).mean(dim=1)


def resolve_null_cond(model: ScoreModel, null_cond: Mapping[str, Tensor | float] | None = None
                      ) -> dict[str, Tensor | float]:
    """The null condition for condition dropout: `null_cond` if given (checked: a dict of
    tensors or numbers keyed by strings), else `{"y": model.net.null_label}` when the network
    has a `null_label` attribute that is not `None` (e.g. a class-conditional U-Net, whose
    null label is `num_classes`).

    **Raises:** `TypeError` for a malformed `null_cond`; `ValueError` when there is none.
    """
    if null_cond is not None:
        return _check_null_cond(null_cond)
    label = getattr(model.net, "null_label", None)
    if label is None:
        raise ValueError(f"condition dropout needs a null condition: pass null_cond (e.g. "
                         f"{{'y': num_classes}}), or use a network with a null_label "
                         f"attribute; {type(model.net).__name__} has none")
    return _check_null_cond({"y": label})


def _check_null_cond(null_cond: object) -> dict[str, Tensor | float]:
    if not isinstance(null_cond, Mapping):
        raise TypeError(f"null_cond must be a dict of tensors or numbers (e.g. {{'y': 10}}), "
                        f"got {type(null_cond).__name__}")
    for key, value in null_cond.items():
        if not isinstance(key, str):
            raise TypeError(f"null_cond keys must be strings, got {type(key).__name__} {key!r}")
        if isinstance(value, bool) or not isinstance(value, (Tensor, numbers.Number)):
            raise TypeError(f"null_cond[{key!r}] must be a tensor or a number, got "
                            f"{type(value).__name__}")
    return dict(null_cond)


def drop_cond(cond: Mapping[str, Tensor], p: float, null_cond: Mapping[str, Tensor | float],
              generator: torch.Generator | None = None) -> dict[str, Tensor]:
    r"""Condition dropout for classifier-free guidance training (Ho & Salimans 2022,
    Algorithm 1).

    Draws $u_i \sim U(0, 1)$ for each sample $i$ (one `torch.rand(B)` from `generator`, only
    when $p > 0$) and replaces sample $i$'s condition by the null condition where $u_i < p$:
    every key of that sample together, so a dropped sample is fully unconditional. $p = 0$
    returns the condition unchanged and draws nothing; $p = 1$ drops every sample.

    **Arguments:**

    - `cond`: a non-empty dict of tensors with a common batch dimension `B`.
    - `p`: the drop probability, in $[0, 1]$.
    - `null_cond`: the null condition, one entry for each key of `cond` and no other: a
      number or a tensor that broadcasts against the `(B, ...)` value (a scalar null label,
      one sample's shape, or per-sample values); it is cast to the value's dtype.
    - `generator`: draws the mask, on the device of `cond`'s tensors.

    **Returns:** a new dict with the keys and shapes of `cond`.
    """
    p = check_real("cond_drop", p, low=0.0, high=1.0)
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a dict of tensors, got {type(cond).__name__}")
    if not cond:
        raise ValueError("drop_cond needs a non-empty dict of conditioning tensors, got {}")
    first = next(iter(cond.values()))
    if not isinstance(first, Tensor) or first.dim() == 0:
        raise TypeError(f"cond values must be tensors with a batch dimension, got {first!r}")
    cond = check_cond(cond, first.shape[0])
    null_cond = _check_null_cond(null_cond)
    if set(null_cond) != set(cond):
        raise ValueError(f"null_cond must give a null value for each conditioning key and no "
                         f"other: cond has {sorted(cond)}, null_cond has {sorted(null_cond)}")
    nulls = {}
    for key, value in cond.items():
        null = torch.as_tensor(null_cond[key], device=value.device)
        if null.is_floating_point() and not value.is_floating_point():
            raise TypeError(f"null_cond[{key!r}] is floating point but cond[{key!r}] is "
                            f"{value.dtype}; give an integer null value")
        try:
            fits = torch.broadcast_shapes(null.shape, value.shape) == value.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"null_cond[{key!r}] of shape {tuple(null.shape)} does not "
                             f"broadcast to cond[{key!r}] of shape {tuple(value.shape)}")
        nulls[key] = null.to(value.dtype)
    if p == 0:
        return cond
    drop = torch.rand(first.shape[0], generator=generator, device=first.device) < p
    return {k: torch.where(bcast(drop, v), nulls[k], v) for k, v in cond.items()}


def _conditioning(model: ScoreModel, cond: Mapping[str, Tensor] | None, batch: int,
                  cond_drop: float, null_cond: Mapping[str, Tensor | float] | None
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor | float] | None]:
    """The checks both losses make before any draw: the validated `cond`, and the null
    condition (`None` when nothing is dropped)."""
    cond = check_cond(cond, batch)
    p = check_real("cond_drop", cond_drop, low=0.0, high=1.0)
    if p == 0:
        return cond, None
    if not cond:
        raise ValueError(f"cond_drop={p} needs a condition to drop, but cond is empty "
                         "(pass cond={'y': labels})")
    null = resolve_null_cond(model, null_cond)
    drop_cond(cond, 0.0, null)                      # checks keys, dtypes, shapes; draws nothing
    return cond, null


def sample_time(sde, n: int, *, eps: float | None = None, importance_sampling: bool = False,
                generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    r"""Draw training times and their importance weights.

    **Returns:** `(t, iw)`, both of shape `(n,)`.

    - Uniform: $t \sim U(\epsilon, T)$ and `iw = 1`.
    - Importance sampling: $t = \lambda^{-1}(\lambda(\epsilon) - uZ)$ with
      $u \sim U(0, 1)$ and $Z = \lambda(\epsilon) - \lambda(T)$, i.e. density
      $q(t) = -\lambda'(t)/Z$. `iw` is the likelihood weight
      $-\lambda'(t)$ times the likelihood ratio $1/((T-\epsilon)q(t))$, which
      is the constant $Z/(T-\epsilon)$.
    """
    eps = sde.train_eps if eps is None else float(eps)
    if not 0.0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, T) = [0, {sde.T}), got {eps}")
    u = torch.rand(n, generator=generator, dtype=dtype, device=device)
    if not importance_sampling:
        return eps + u * (sde.T - eps), torch.ones_like(u)
    lam_lo = sde.log_snr(torch.tensor(sde.T, dtype=u.dtype, device=u.device))
    lam_hi = sde.log_snr(torch.tensor(eps, dtype=u.dtype, device=u.device))
    z = lam_hi - lam_lo
    t = sde.log_snr_inverse(lam_hi - u * z).clamp(eps, sde.T)
    return t, (z / (sde.T - eps)).expand(n).clone()


def dsm_loss(model: ScoreModel, x0: Tensor, weighting: str = "sigma2",
             generator: torch.Generator | None = None, *,
             cond: Mapping[str, Tensor] | None = None, cond_drop: float = 0.0,
             null_cond: Mapping[str, Tensor | float] | None = None, t: Tensor | None = None,
             noise: Tensor | None = None, eps: float | None = None,
             importance_sampling: bool = False, reduction: str = "mean") -> Tensor:
    r"""Denoising score-matching loss (see the module docstring for the formula).

    **Arguments:**

    - `model`: a [`ScoreModel`][scoresde.models.ScoreModel] (any prediction type).
    - `x0`: data, shape `(B, *event_shape)`.
    - `weighting`: `"sigma2"` (DDPM's $\|\varepsilon - \hat\varepsilon\|^2$),
      `"likelihood"` ($g^2$), or `"none"`.
    - `generator`: draws `t` and `noise` when they are not given (and the dropout mask).
    - `cond`: conditioning, a dict of tensors with batch dimension `B` passed to the
      network as keyword arguments (`model.eps(x_t, t, **cond)`), e.g. `{"y": labels}`.
    - `cond_drop`: probability $p \in [0, 1]$ of replacing each sample's condition by the
      null condition (classifier-free guidance training, Ho & Salimans 2022); see
      [`drop_cond`][scoresde.losses.drop_cond]. The mask is drawn after `t` and `noise`.
    - `null_cond`: the null condition (default `{"y": model.net.null_label}`, see
      [`resolve_null_cond`][scoresde.losses.resolve_null_cond]).
    - `t`: optional times, shape `(B,)`, in `[0, T]` (overrides the draw).
    - `noise`: optional $\varepsilon$, shape of `x0`.
    - `eps`: smallest time (default `model.sde.train_eps = 1e-5`).
    - `importance_sampling`: draw `t` with density $\propto g^2/\sigma^2$
      (only with `weighting="likelihood"`).
    - `reduction`: `"mean"` (a scalar) or `"none"` (per-sample losses, shape `(B,)`).

    **Returns:** the loss, mean over data dimensions and batch (no ½ factor).
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("reduction", reduction, _REDUCTIONS)
    check_batch(x0, "x0")
    if importance_sampling and weighting != "likelihood":
        raise ValueError("importance_sampling=True needs weighting='likelihood' "
                         f"(got weighting={weighting!r})")
    sde = model.sde
    b = x0.shape[0]
    cond, null = _conditioning(model, cond, b, cond_drop, null_cond)
    if t is None:
        t, iw = sample_time(sde, b, eps=eps, importance_sampling=importance_sampling,
                            generator=generator, dtype=x0.dtype, device=x0.device)
    else:
        if importance_sampling:
            raise ValueError("importance_sampling draws t itself; do not pass t as well")
        t = as_time(t, b, x0, T=sde.T)
        if t.dim() == 0:
            t = t.expand(b)
        iw = None
    noise = _noise_like(x0, noise, generator)
    if null is not None:
        cond = drop_cond(cond, cond_drop, null, generator)
    x_t = sde.perturb(x0, t, noise)
    per = _per_sample_mse(model.eps(x_t, t, **cond), noise)
    if weighting == "likelihood":
        if importance_sampling:
            per = per * iw
        else:
            c = sde.coefficients(t)
            per = per * (c.g2 / c.sigma ** 2)
    elif weighting == "none":
        per = per / sde.coefficients(t).sigma ** 2
    return per.mean() if reduction == "mean" else per


def ddpm_loss(model: ScoreModel, x0: Tensor, schedule: DiscreteSchedule,
              generator: torch.Generator | None = None, *,
              cond: Mapping[str, Tensor] | None = None, cond_drop: float = 0.0,
              null_cond: Mapping[str, Tensor | float] | None = None,
              indices: Tensor | None = None, noise: Tensor | None = None,
              reduction: str = "mean") -> Tensor:
    r"""DDPM's training loss, Ho et al. (2020) Algorithm 1 ($L_\text{simple}$).

    Draw $i \sim U\{0, \dots, N-1\}$ and $\varepsilon \sim N(0, I)$, form
    $x_i = \sqrt{\bar\alpha_i}\,x_0 + \sqrt{1-\bar\alpha_i}\,\varepsilon$ and return
    $\|\varepsilon - \hat\varepsilon_\theta(x_i, t_i)\|^2$ (mean over dimensions and
    batch). The network is fed the continuous time $t_i = (i+1)/N$ (docs/math.md, "Grid index ↔ time"), so
    the trained model serves every continuous-time solver.

    **Arguments:** `model` must predict `"eps"`; `indices` (shape `(B,)`, integers in
    `[0, N-1]`) and `noise` override the draws; `cond`, `cond_drop`, `null_cond` and
    `reduction` as in [`dsm_loss`][scoresde.losses.dsm_loss] (the dropout mask is drawn
    after the indices and the noise).
    """
    if model.prediction != "eps":
        raise ValueError("ddpm_loss is Ho et al.'s L_simple for an eps-prediction network; "
                         f"got prediction={model.prediction!r} (use dsm_loss instead)")
    if not model.sde.variance_preserving:
        raise ValueError(f"ddpm_loss trains on a variance-preserving DDPM schedule, but the model's "
                         f"SDE is {model.sde!r}: its samplers would read the network at the "
                         "wrong noise levels; use a VP SDE (e.g. sd.VPSDE.from_schedule("
                         "schedule)) or dsm_loss")
    check_choice("reduction", reduction, _REDUCTIONS)
    check_batch(x0, "x0")
    b = x0.shape[0]
    cond, null = _conditioning(model, cond, b, cond_drop, null_cond)
    if indices is None:
        indices = torch.randint(0, schedule.N, (b,), generator=generator, device=x0.device)
    else:
        indices = torch.as_tensor(indices, device=x0.device)
        if indices.shape != (b,) or indices.is_floating_point():
            raise ValueError(f"indices must be integers of shape ({b},), got "
                             f"{indices.dtype} of shape {tuple(indices.shape)}")
        if bool(((indices < 0) | (indices >= schedule.N)).any()):
            raise ValueError(f"indices must lie in [0, {schedule.N - 1}]")
    noise = _noise_like(x0, noise, generator)
    if null is not None:
        cond = drop_cond(cond, cond_drop, null, generator)
    acp = schedule.cast("alphas_cumprod", x0)[indices]
    x_t = bcast(acp.sqrt(), x0) * x0 + bcast((1.0 - acp).sqrt(), x0) * noise
    t = schedule.cast("times", x0)[indices]
    per = _per_sample_mse(model.eps(x_t, t, **cond), noise)
    return per.mean() if reduction == "mean" else per
