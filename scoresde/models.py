r"""Score models: a network plus the SDE, with every parametrisation conversion in one place.

With $x_t = \alpha x_0 + \sigma\varepsilon$ (DESIGN.md), a network may predict

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

from ._checks import as_time, bcast, check_batch
from .sdes import SDE

Tensor = torch.Tensor

__all__ = ["ScoreModel", "PREDICTIONS"]

PREDICTIONS = ("eps", "score", "x0", "v")


class _FunctionNet(nn.Module):
    """Wraps a plain callable `fn(x, t)` as a module (no parameters)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.fn(x, t)


class ScoreModel(nn.Module):
    r"""A network `net(x, t)` and the SDE it was trained for.

    **Arguments:**

    - `net`: a module or callable mapping `x` of shape `(B, *event_shape)` and `t`
      of shape `(B,)` to a tensor of the shape of `x`.
    - `sde`: the forward [`SDE`][scoresde.sdes.SDE].
    - `prediction`: what `net` predicts, one of `"eps" | "score" | "x0" | "v"`.

    `n_evals` counts network forward passes (a host-side integer; samplers and the
    likelihood read it to report honest NFE). It is a module, so `.to()`,
    `.parameters()` and `state_dict()` reach the network.
    """

    def __init__(self, net: nn.Module | Callable[[Tensor, Tensor], Tensor], sde: SDE,
                 prediction: str = "eps") -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
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
    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The raw network output `net(x, t)`, with `t` expanded to shape `(B,)`."""
        check_batch(x)
        t = as_time(t, x.shape[0], x, T=self.sde.T)
        return self._net(x, t)

    def _net(self, x: Tensor, t: Tensor) -> Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        out = self.net(x, t)
        self.n_evals += 1
        if not isinstance(out, Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the network returned shape {shape} for input of shape "
                             f"{tuple(x.shape)}; a score network must return the input's shape")
        return out

    def _coefs(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        check_batch(x)
        t = as_time(t, x.shape[0], x, T=self.sde.T)
        alpha = bcast(torch.exp(self.sde._log_alpha(t)), x)
        sigma = bcast(self.sde._sigma(t), x)
        return t, alpha, sigma

    # ----- conversions (the only place they exist) ----------------------------------
    def _eps(self, x: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        out = self._net(x, t)
        if self.prediction == "eps":
            return out
        if self.prediction == "score":
            return -sigma * out
        if self.prediction == "x0":
            return (x - alpha * out) / sigma
        return (alpha * out + sigma * x) / (alpha ** 2 + sigma ** 2)

    def eps(self, x: Tensor, t: float | Tensor) -> Tensor:
        r"""Predicted noise $\hat\varepsilon(x, t)$, shape of `x`."""
        return self._eps(x, *self._coefs(x, t))

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        r"""Score $s(x, t) = \nabla_x \log p_t(x) = -\hat\varepsilon/\sigma$."""
        if self.prediction == "score":
            return self(x, t)
        t, alpha, sigma = self._coefs(x, t)
        return -self._eps(x, t, alpha, sigma) / sigma

    def x0(self, x: Tensor, t: float | Tensor) -> Tensor:
        r"""Predicted data $\hat x_0 = (x - \sigma\hat\varepsilon)/\alpha$
        (Tweedie's formula $(x + \sigma^2 s)/\alpha$)."""
        if self.prediction == "x0":
            return self(x, t)
        t, alpha, sigma = self._coefs(x, t)
        return (x - sigma * self._eps(x, t, alpha, sigma)) / alpha

    def v(self, x: Tensor, t: float | Tensor) -> Tensor:
        r"""Predicted velocity $\hat v = \alpha\hat\varepsilon - \sigma\hat x_0$."""
        if self.prediction == "v":
            return self(x, t)
        t, alpha, sigma = self._coefs(x, t)
        e = self._eps(x, t, alpha, sigma)
        return alpha * e - sigma * (x - sigma * e) / alpha

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, prediction={self.prediction!r}"
