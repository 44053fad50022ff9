r"""Score models: a network plus the SDE, with every parametrisation conversion in one place.

With $x_t = \alpha x_0 + \sigma\varepsilon$ (docs/math.md, "Notation"), a network may predict

- `"eps"`: the noise $\hat\varepsilon$ (Ho et al. 2020),
- `"score"`: $\nabla_x \log p_t(x)$ directly (Song et al. 2021),
- `"x0"`: the clean data $\hat x_0$,
- `"v"`: $\hat v = \alpha\hat\varepsilon - \sigma\hat x_0$ (Salimans & Ho 2022).

They are related by $s = -\hat\varepsilon/\sigma$,
$\hat x_0 = (x - \sigma\hat\varepsilon)/\alpha = (x + \sigma^2 s)/\alpha$ (Tweedie),
$\hat\varepsilon = (x - \alpha\hat x_0)/\sigma$,
$\hat\varepsilon = (\alpha\hat v + \sigma x)/(\alpha^2+\sigma^2)$ (valid for any
$\alpha, \sigma$, not only VP).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .sdes import SDE
from .validation import as_time, bcast, check_batch, check_choice

Tensor = torch.Tensor

__all__ = ["ScoreModel", "PREDICTIONS", "check_model"]

PREDICTIONS = ("eps", "score", "x0", "v")


class _FunctionNet(nn.Module):
    """Wraps a plain callable `fn(x, t)` as a module (no parameters)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        return self.fn(x, t, **cond)


class ScoreModel(nn.Module):
    r"""A network `net(x, t, **cond)` and the SDE it was trained for.

    **Arguments:**

    - `net`: a module or callable mapping `x` of shape `(B, *event_shape)` and `t`
      of shape `(B,)` (and optional keyword conditioning tensors with batch dimension `B`)
      to a tensor of the shape of `x`.
    - `sde`: the forward [`SDE`][scoresde.sdes.SDE].
    - `prediction`: what `net` predicts, one of `"eps" | "score" | "x0" | "v"`.

    `n_evals` counts network evaluations (a host-side integer; samplers and the
    likelihood read it to report honest NFE): each call of `forward` adds
    `evals_per_call`, the public cost of one call in network evaluations: 1 for a plain
    model, 2 for a classifier-free guided one ([`scoresde.guidance`][scoresde.guidance.guidance]
    evaluates the network on a doubled batch), so that a budget of `nfe` evaluations is the
    same work whatever the model. [`sample`][scoresde.samplers.sampling.sample] turns an NFE
    budget into `nfe / evals_per_call` calls. It is a module, so `.to()`, `.parameters()` and
    `state_dict()` reach the network.

    **Paths.** The checked methods `eps`, `score`, `x0`, `v` validate `x` and `t`, compute
    the coefficients and call [`evaluate`][scoresde.models.ScoreModel.evaluate], the
    unchecked fast path that solvers and the likelihood call with coefficients computed once
    per solve; `evaluate` calls `forward`, the one network call. Override `forward` (what
    the network returns) or `evaluate` (what the model predicts) in a subclass, never the
    derived methods alone.
    """

    def __init__(self, net: nn.Module | Callable[[Tensor, Tensor], Tensor], sde: SDE,
                 prediction: str = "eps") -> None:
        super().__init__()
        check_choice("prediction", prediction, PREDICTIONS)
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a scoresde SDE, got {type(sde).__name__}")
        if not isinstance(net, nn.Module):
            if not callable(net):
                raise TypeError(f"net must be an nn.Module or a callable, got {type(net).__name__}")
            net = _FunctionNet(net)
        self.net = net
        self.sde = sde
        self.prediction = prediction
        self.n_evals = 0
        #: network evaluations one call counts (`n_evals` grows by it per call)
        self.evals_per_call = 1
        self._device: torch.device | None = None

    @classmethod
    def from_score_fn(cls, fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, *,
                      device: torch.device | str | None = None) -> ScoreModel:
        """Wrap any callable `fn(x, t) -> score` (e.g. an exact score) as a model."""
        model = cls(_FunctionNet(fn), sde, prediction="score")
        model._device = torch.device(device) if device is not None else None
        return model

    @property
    def device(self) -> torch.device:
        """Device of the network's parameters (or the one given to
        [`from_score_fn`][scoresde.models.ScoreModel.from_score_fn])."""
        for p in self.net.parameters():
            return p.device
        for b in self.net.buffers():
            return b.device
        return self._device if self._device is not None else torch.device("cpu")

    # ----- the one network call --------------------------------------------------------
    def forward(self, x: Tensor, t: float | Tensor, **cond: Tensor) -> Tensor:
        """The raw network output `net(x, t, **cond)`: the **one** place the network is
        called, so `n_evals` (grown by `evals_per_call`), forward hooks on this module and
        any wrapper of `net` (DDP, `torch.compile`) see every evaluation on every path.

        Unchecked for speed: `x` must be `(B, *event_shape)` and a tensor `t` must already be
        in range (shape `()` or `(B,)`; a 0-d `t` is expanded to `(B,)`); a Python float `t`
        is checked and converted. The output must have the shape of `x`.
        """
        if not isinstance(t, Tensor):
            t = as_time(t, x.shape[0], x, T=self.sde.T)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        out = self.net(x, t, **cond)
        self.n_evals += self.evals_per_call
        if not isinstance(out, Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the network returned shape {shape} for input of shape "
                             f"{tuple(x.shape)}; a score network must return the input's shape")
        if out.dtype != x.dtype:
            if not torch.is_autocast_enabled(x.device.type):
                raise ValueError(f"the network returned {out.dtype} for {x.dtype} input; a score "
                                 "network must return the input's dtype (cast its output, or "
                                 "the model with .to(dtype)), so samples keep their dtype")
            out = out.to(x.dtype)          # mixed precision: results in the input's dtype
        return out

    # ----- conversions (the only place they exist) ----------------------------------
    def evaluate(self, x: Tensor, t: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                 kind: str = "eps", **cond: Tensor) -> Tensor:
        r"""One network evaluation converted to `kind` (`"eps"`, `"score"`, `"x0"` or
        `"v"`), given the coefficients $\alpha(t)$, $\sigma(t)$: the public, **unchecked**
        fast path for solvers and the likelihood, which compute the coefficients once
        (e.g. with [`SDE.coefficients`][scoresde.sdes.SDE.coefficients]) and check their
        inputs once per solve.

        `t` is a tensor of shape `()` or `(B,)` in range, in `x`'s dtype; `alpha` and
        `sigma` are Python floats or tensors broadcastable against `x` (use
        `scoresde.validation.bcast` for per-sample ones). The checked methods
        [`eps`][scoresde.models.ScoreModel.eps], `score`, `x0`, `v` call this, so a subclass
        that overrides `evaluate` (or `forward`) changes every path consistently.
        """
        return self.convert(self(x, t, **cond), x, alpha, sigma, kind)

    def convert(self, out: Tensor, x: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                kind: str = "eps") -> Tensor:
        r"""A raw network output `out` (what the network predicts, `prediction`) at `x`
        converted to `kind` (`"eps"`, `"score"`, `"x0"` or `"v"`) with the coefficients
        $\alpha$, $\sigma$ of its time: the one place the conversions (module docstring)
        are written; [`evaluate`][scoresde.models.ScoreModel.evaluate] is
        `convert(self(x, t), x, alpha, sigma, kind)`. No network call."""
        p = self.prediction
        if kind == p:
            return out
        if p == "eps":
            eps = out
        elif p == "score":
            eps = -sigma * out
        elif p == "x0":
            eps = (x - alpha * out) / sigma
        else:
            eps = (alpha * out + sigma * x) / (alpha ** 2 + sigma ** 2)
        if kind == "eps":
            return eps
        if kind == "score":
            return -eps / sigma
        if kind == "x0":
            return (x - sigma * eps) / alpha
        if kind == "v":
            return alpha * eps - sigma * (x - sigma * eps) / alpha
        raise ValueError(f"kind must be one of {PREDICTIONS}, got {kind!r}")

    def _checked(self, x: Tensor, t: float | Tensor, kind: str, cond: dict[str, Tensor]
                 ) -> Tensor:
        check_batch(x)
        t = as_time(t, x.shape[0], x, T=self.sde.T)
        c = self.sde.coefficients(t)
        return self.evaluate(x, t, bcast(c.alpha, x), bcast(c.sigma, x), kind, **cond)

    def eps(self, x: Tensor, t: float | Tensor, **cond: Tensor) -> Tensor:
        r"""Predicted noise $\hat\varepsilon(x, t)$, shape of `x`."""
        return self._checked(x, t, "eps", cond)

    def score(self, x: Tensor, t: float | Tensor, **cond: Tensor) -> Tensor:
        r"""Score $s(x, t) = \nabla_x \log p_t(x) = -\hat\varepsilon/\sigma$."""
        return self._checked(x, t, "score", cond)

    def x0(self, x: Tensor, t: float | Tensor, **cond: Tensor) -> Tensor:
        r"""Predicted data $\hat x_0 = (x - \sigma\hat\varepsilon)/\alpha$
        (Tweedie's formula $(x + \sigma^2 s)/\alpha$)."""
        return self._checked(x, t, "x0", cond)

    def v(self, x: Tensor, t: float | Tensor, **cond: Tensor) -> Tensor:
        r"""Predicted velocity $\hat v = \alpha\hat\varepsilon - \sigma\hat x_0$."""
        return self._checked(x, t, "v", cond)

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, prediction={self.prediction!r}"


def check_model(model: object, name: str = "model") -> ScoreModel:
    """`model` if it is a [`ScoreModel`][scoresde.models.ScoreModel], else `TypeError`."""
    if not isinstance(model, ScoreModel):
        raise TypeError(f"{name} must be a scoresde.ScoreModel, got {type(model).__name__}")
    return model
