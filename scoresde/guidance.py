r"""Guidance: classifier-free guidance and classifier guidance, each as a `ScoreModel`.

**Classifier-free guidance** (Ho & Salimans 2022, "Classifier-free diffusion guidance"). A
network trained with conditioning dropout (`dsm_loss(..., cond_drop=p)`) predicts both
$\hat\varepsilon(x, t \mid c)$ and, with the null conditioning $\varnothing$ (e.g. the label
`net.null_label`), $\hat\varepsilon(x, t \mid \varnothing)$. The guided prediction with
guidance weight $w$ is

$$
\tilde\varepsilon = (1 + w)\,\hat\varepsilon(x, t \mid c) - w\,\hat\varepsilon(x, t \mid \varnothing),
\qquad
\tilde s = s(x \mid c) + w\,[s(x \mid c) - s(x \mid \varnothing)],
$$

the second form being the same in score terms ($s = -\hat\varepsilon/\sigma$): the
conditional score plus $w$ times the score of the implicit classifier
$p_t(c \mid x) \propto p_t(x \mid c)/p_t(x)$. $w = 0$ is plain conditional sampling and
$w = -1$ unconditional sampling. **The other common convention** (e.g. diffusers'
`guidance_scale`, Stable Diffusion) writes
$\tilde\varepsilon = \hat\varepsilon_\varnothing + s\,(\hat\varepsilon_c - \hat\varepsilon_\varnothing)$
with $s = 1 + w$: its `guidance_scale=7.5` is `scale=6.5` here, and its $s = 1$ (no
guidance) is `scale=0`.

Because every parametrisation (`"eps"`, `"score"`, `"x0"`, `"v"`) is affine in
$\hat\varepsilon$ for fixed $x, t$ and the two weights sum to 1, the same combination of the
raw network outputs is the guided prediction in any of them; the guided model keeps the
network's `prediction`.

**Cost.** One call evaluates the network once on the doubled batch $[x; x]$ with
conditioning $[c; \varnothing]$, and counts as 2 network evaluations:
`model.evals_per_call = 2` (see [`ScoreModel`][scoresde.models.ScoreModel]), so `n_evals`,
`sample(...).nfe` and `log_likelihood(...).nfe` charge a guided model double and budgets
stay equal work: `sd.sample(guided, nfe=100)` makes 50 calls.

**What a guided "likelihood" is.** The guided score is not the score of any fixed,
normalised distribution's diffusion in general, so `log_likelihood(guided, x)` is the
log-density of `x` under the distribution that the guided *probability-flow ODE* carries
the prior to (the PF-ODE density of the guided flow, exactly computed by the
change-of-variables formula); it is not $\log p(x \mid c)$ nor a posterior, except at
$w = 0$ where it is the conditional model's own PF-ODE likelihood.

**Classifier guidance** (Dhariwal & Nichol 2021, "Diffusion models beat GANs on image
synthesis", Alg. 1; Song et al. 2021, sec. 5): with a time-dependent classifier
$\log p_t(y \mid x)$, $\tilde s = s(x, t) + \gamma\,\nabla_x \log p_t(y \mid x)$, i.e.
$\tilde\varepsilon = \hat\varepsilon - \gamma\,\sigma\,\nabla_x \log p_t(y \mid x)$
([`classifier_guidance`][scoresde.guidance.classifier_guidance]).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .models import ScoreModel, check_model
from .validation import bcast, check_real

Tensor = torch.Tensor

__all__ = ["guidance", "GuidedModel", "classifier_guidance", "ClassifierGuidedModel"]


def _as_cond_values(cond: object, name: str) -> dict[str, Tensor]:
    """A mapping of names to tensors or numbers as a dict of tensors (not yet batched)."""
    if not isinstance(cond, Mapping):
        raise TypeError(f"{name} must be a dict of conditioning values, e.g. {{'y': "
                        f"net.null_label}}, got {type(cond).__name__}")
    out = {}
    for k, v in cond.items():
        if not isinstance(k, str):
            raise TypeError(f"{name} keys must be strings (keyword names of the network), got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (Tensor, numbers.Number)):
            raise TypeError(f"{name}[{k!r}] must be a tensor or a number, got {type(v).__name__}")
        out[k] = v if isinstance(v, Tensor) else torch.tensor(v)
    return out


def _batched(value: Tensor, like: Tensor | None, batch: int, name: str) -> Tensor:
    """`value` broadcast to the batch: to `like`'s shape (the conditional input it pairs
    with), or to `(batch, *value.shape)` minus a leading 1."""
    if like is not None:
        value = value.to(device=like.device, dtype=like.dtype)
        try:
            return value.expand_as(like)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to the "
                             f"conditioning's shape {tuple(like.shape)}") from None
    shape = tuple(value.shape[1:]) if value.dim() and value.shape[0] == 1 else tuple(value.shape)
    if value.dim() and value.shape[0] == batch:
        return value
    return value.reshape(shape).expand((batch, *shape))


class _CFGNet(nn.Module):
    """The doubled-batch network call of classifier-free guidance (see `GuidedModel`)."""

    def __init__(self, model: ScoreModel, scale: float, null_cond: dict[str, Tensor],
                 cond: dict[str, Tensor]) -> None:
        super().__init__()
        self.model, self.scale = model, scale
        self.null_cond, self.default_cond = null_cond, cond

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        b = x.shape[0]
        full = dict(cond)
        for k, v in self.default_cond.items():
            if k not in full:
                full[k] = _batched(v, None, b, f"the default conditioning {k!r}").to(x.device)
        missing = [k for k in self.null_cond if k not in full]
        if missing:
            raise ValueError(f"classifier-free guidance needs the conditioning {missing} "
                             f"(e.g. sample(..., cond={{{missing[0]!r}: labels}}), or "
                             f"guidance(..., cond=...) for a default)")
        doubled = {}
        for k, v in full.items():
            other = (_batched(self.null_cond[k], v, b, f"null_cond[{k!r}]")
                     if k in self.null_cond else v)
            doubled[k] = torch.cat([v, other])
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), **doubled)
        w = self.scale
        return (1.0 + w) * out[:b] - w * out[b:]


class GuidedModel(ScoreModel):
    r"""A classifier-free guided [`ScoreModel`][scoresde.models.ScoreModel]: see
    [`guidance`][scoresde.guidance.guidance]. `base` is the conditional model, `scale` the
    guidance weight $w$, `null_cond` the null conditioning; `evals_per_call` is twice the
    base model's."""

    def __init__(self, model: ScoreModel, scale: float, null_cond: dict[str, Tensor],
                 cond: dict[str, Tensor]) -> None:
        super().__init__(_CFGNet(model, scale, null_cond, cond), model.sde, model.prediction)
        self.evals_per_call = 2 * model.evals_per_call

    @property
    def base(self) -> ScoreModel:
        """The conditional model being guided."""
        return self.net.model

    @property
    def scale(self) -> float:
        """The guidance weight $w$."""
        return self.net.scale

    @property
    def null_cond(self) -> dict[str, Tensor]:
        """The null conditioning."""
        return self.net.null_cond

    @property
    def device(self) -> torch.device:
        return self.base.device

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}, null_cond={self.null_cond!r}, " + super().extra_repr()


def guidance(model: ScoreModel, scale: float, null_cond: Mapping[str, Tensor | int | float], *,
             cond: Mapping[str, Tensor | int | float] | None = None) -> GuidedModel:
    r"""Classifier-free guidance (Ho & Salimans 2022) of a conditional model, as a
    `ScoreModel` usable with every solver, `sample`, `inpaint` and `log_likelihood`:
    $\tilde\varepsilon = (1 + w)\,\hat\varepsilon(x \mid c) - w\,\hat\varepsilon(x \mid
    \varnothing)$ with $w$ = `scale` (module docstring; the convention
    $\hat\varepsilon_\varnothing + s(\hat\varepsilon_c - \hat\varepsilon_\varnothing)$ has
    $s = 1 + w$).

    **Arguments:**

    - `model`: the conditional model (its network takes the conditioning keywords, e.g.
      `y=labels`, and the null conditioning).
    - `scale`: the guidance weight $w$ (a finite real; 0 = conditional, -1 = unconditional).
    - `null_cond`: the null conditioning per keyword, e.g. `{"y": net.null_label}`: a number
      or tensor broadcast to the batch's conditioning (a scalar label to `(B,)`, an
      embedding of shape `(E,)` to `(B, E)`). Keywords not in `null_cond` are passed
      unchanged to both halves.
    - `cond`: optional default conditioning, used for a keyword a call does not pass (a
      scalar label, or a tensor of shape `(E,)`/`(1, ...)`, broadcast to the batch): e.g.
      `log_likelihood(guidance(model, w, {"y": K}, cond={"y": 3}), x)` for class 3, since
      `log_likelihood` passes no conditioning itself.

    **Returns:** a [`GuidedModel`][scoresde.guidance.GuidedModel]; each call evaluates the
    network once on the doubled batch and counts 2 evaluations (`evals_per_call = 2`).
    The network must treat the samples of a batch independently (no batch statistics).
    """
    check_model(model)
    w = check_real("scale", scale)
    null = _as_cond_values(null_cond, "null_cond")
    if not null:
        raise ValueError("null_cond is empty: name the null conditioning, e.g. "
                         "{'y': net.null_label}")
    default = _as_cond_values(cond, "cond") if cond is not None else {}
    return GuidedModel(model, w, null, default)


class _ClassifierGuidedNet(nn.Module):
    """The score of `ClassifierGuidedModel`: base score plus scale * grad log p_t(y|x)."""

    def __init__(self, model: ScoreModel, log_prob: Callable[..., Tensor], scale: float,
                 conditional: bool) -> None:
        super().__init__()
        self.model, self.log_prob, self.scale = model, log_prob, scale
        self.conditional = conditional
        self.classifier_grads = 0

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        c = self.model.sde.coefficients(t)
        s = self.model.evaluate(x, t, bcast(c.alpha, x), bcast(c.sigma, x), "score",
                                **(cond if self.conditional else {}))
        if self.scale == 0.0:
            return s
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = self.log_prob(xg, t, **cond)
            if not isinstance(lp, Tensor) or lp.shape != (x.shape[0],):
                shape = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
                raise ValueError(f"the classifier must return log p_t(y|x) of shape (B,) = "
                                 f"({x.shape[0]},), got {shape}")
            grad = torch.autograd.grad(lp.sum(), xg)[0]
        self.classifier_grads += 1
        return s + self.scale * grad.to(s.dtype)


class ClassifierGuidedModel(ScoreModel):
    r"""A classifier-guided [`ScoreModel`][scoresde.models.ScoreModel] (prediction
    `"score"`): see [`classifier_guidance`][scoresde.guidance.classifier_guidance]."""

    def __init__(self, model: ScoreModel, log_prob: Callable[..., Tensor], scale: float,
                 conditional: bool = False) -> None:
        super().__init__(_ClassifierGuidedNet(model, log_prob, scale, conditional), model.sde,
                         "score")
        self.evals_per_call = model.evals_per_call

    @property
    def base(self) -> ScoreModel:
        """The model being guided."""
        return self.net.model

    @property
    def classifier_grads(self) -> int:
        """Classifier gradients taken (one forward and one backward pass of the classifier
        each; not network evaluations of the score model, so not in `n_evals`)."""
        return self.net.classifier_grads

    @property
    def device(self) -> torch.device:
        return self.base.device


def classifier_guidance(model: ScoreModel, log_prob: Callable[..., Tensor], scale: float, *,
                        conditional: bool = False) -> ClassifierGuidedModel:
    r"""Classifier guidance (Dhariwal & Nichol 2021): the score
    $\tilde s(x, t) = s(x, t) + \gamma\,\nabla_x \log p_t(y \mid x)$ with $\gamma$ = `scale`.

    **Arguments:**

    - `model`: the score model, unconditional unless `conditional=True`.
    - `log_prob`: the user's time-dependent classifier, `log_prob(x, t, **cond) -> (B,)`,
      $\log p_t(y \mid x)$ of the wanted labels (e.g. `cond={"y": labels}` from `sample`,
      or labels bound in a closure); differentiable in `x`. `t` has shape `(B,)`.
    - `scale`: $\gamma$ (finite real; 0 = no guidance).
    - `conditional`: whether `model` takes the conditioning too (a conditional model guided
      further by a classifier, Dhariwal & Nichol's "conditional + classifier" setting);
      by default only the classifier receives it.

    **Returns:** a [`ClassifierGuidedModel`][scoresde.guidance.ClassifierGuidedModel]. Each
    call evaluates the score network once (`evals_per_call` as the base model) and takes
    one classifier gradient (`classifier_grads` counts them), also under `torch.no_grad()`.
    """
    check_model(model)
    if not callable(log_prob):
        raise TypeError(f"log_prob must be callable as log_prob(x, t, **cond), got "
                        f"{type(log_prob).__name__}")
    if not isinstance(conditional, bool):
        raise TypeError(f"conditional must be a bool, got {type(conditional).__name__}")
    return ClassifierGuidedModel(model, log_prob, check_real("scale", scale), conditional)
