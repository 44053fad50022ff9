r"""Time grids shared by every fixed-grid solver.

A grid is a decreasing float64 tensor of ``n_steps + 1`` times from $T$ down to $t_\text{end}$
(both included exactly). Grids are small objects so that a notebook can pass its own.

- `UniformGrid`: uniform in $t$.
- `QuadraticGrid`: uniform in $\sqrt t$, dense near $t_\text{end}$ (DDIM's "quad" spacing,
  Song, Meng & Ermon 2021).
- `LogSNRGrid`: uniform in $\lambda(t) = \log(\alpha^2/\sigma^2)$ (DPM-Solver, Lu et al. 2022).
- `KarrasGrid`: EDM's spacing (Karras et al. 2022, eq. 5) of the noise level
  $\tilde\sigma = \sigma/\alpha = e^{-\lambda/2}$:
  $\tilde\sigma_i = (\tilde\sigma_{max}^{1/\rho} + \tfrac{i}{n}(\tilde\sigma_{min}^{1/\rho}
  - \tilde\sigma_{max}^{1/\rho}))^\rho$, $\rho = 7$, mapped back to $t$ through $\lambda^{-1}$.
- `PolyExponentialGrid`: k-diffusion's ``get_sigmas_polyexponential``:
  $\log\tilde\sigma_i = \log\tilde\sigma_{min} + (1 - \tfrac{i}{n})^\rho\,
  (\log\tilde\sigma_{max} - \log\tilde\sigma_{min})$; $\rho = 1$ is `LogSNRGrid`.

DPM-Solver's ``skip_type`` options ``"time_uniform"``, ``"time_quadratic"`` and ``"logSNR"``
(Lu et al. 2022) are `UniformGrid`, `QuadraticGrid` and `LogSNRGrid`; k-diffusion's
``get_sigmas_karras`` and ``get_sigmas_exponential`` are `KarrasGrid` and `LogSNRGrid`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from ..sdes import SDE
from ..validation import check_int

Tensor = torch.Tensor

__all__ = ["TimeGrid", "UniformGrid", "QuadraticGrid", "LogSNRGrid", "KarrasGrid",
           "PolyExponentialGrid", "GRIDS", "register_grid", "get_grid"]


class TimeGrid(ABC):
    """A rule that places ``n_steps + 1`` decreasing times from ``T`` to ``t_end``."""

    name: str = ""

    def __call__(self, sde: SDE, n_steps: int, t_end: float) -> Tensor:
        """The grid: float64 tensor of shape ``(n_steps + 1,)``, ``grid[0] = T``,
        ``grid[-1] = t_end``, strictly decreasing."""
        check_int("n_steps", n_steps, 1)
        if not 0.0 < t_end < sde.T:
            raise ValueError(f"t_end must lie in (0, T) = (0, {sde.T}), got {t_end}")
        g = self._grid(sde, n_steps, float(t_end)).to(torch.float64)
        g[0], g[-1] = sde.T, t_end
        if not bool((g[1:] < g[:-1]).all()):
            raise ValueError(f"{type(self).__name__} produced a non-decreasing grid for "
                             f"n_steps={n_steps}, t_end={t_end}")
        return g

    @abstractmethod
    def _grid(self, sde: SDE, n: int, t_end: float) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class UniformGrid(TimeGrid):
    """$t_i = T + \\tfrac{i}{n}(t_\\text{end} - T)$."""

    name = "uniform"

    def _grid(self, sde: SDE, n: int, t_end: float) -> Tensor:
        return torch.linspace(sde.T, t_end, n + 1, dtype=torch.float64)


class QuadraticGrid(TimeGrid):
    """$t_i = (\\sqrt T + \\tfrac{i}{n}(\\sqrt{t_\\text{end}} - \\sqrt T))^2$."""

    name = "quadratic"

    def _grid(self, sde: SDE, n: int, t_end: float) -> Tensor:
        return torch.linspace(math.sqrt(sde.T), math.sqrt(t_end), n + 1,
                              dtype=torch.float64) ** 2


class LogSNRGrid(TimeGrid):
    """$t_i = \\lambda^{-1}(\\lambda(T) + \\tfrac{i}{n}(\\lambda(t_\\text{end}) - \\lambda(T)))$."""

    name = "logsnr"

    def _grid(self, sde: SDE, n: int, t_end: float) -> Tensor:
        ends = sde.log_snr(torch.tensor([sde.T, t_end], dtype=torch.float64))
        lam = torch.linspace(float(ends[0]), float(ends[1]), n + 1, dtype=torch.float64)
        return sde.log_snr_inverse(lam)


class KarrasGrid(TimeGrid):
    """EDM spacing of $\\tilde\\sigma = e^{-\\lambda/2}$ with exponent ``rho`` (default 7)."""

    name = "karras"

    def __init__(self, rho: float = 7.0) -> None:
        if not rho > 0:
            raise ValueError(f"rho must be positive, got {rho}")
        self.rho = float(rho)

    def _grid(self, sde: SDE, n: int, t_end: float) -> Tensor:
        lam = sde.log_snr(torch.tensor([sde.T, t_end], dtype=torch.float64))
        s_max, s_min = torch.exp(-0.5 * lam)
        i = torch.arange(n + 1, dtype=torch.float64) / n
        r = 1.0 / self.rho
        s = (s_max ** r + i * (s_min ** r - s_max ** r)) ** self.rho
        return sde.log_snr_inverse(-2.0 * torch.log(s))

    def __repr__(self) -> str:
        return f"KarrasGrid(rho={self.rho})"


class PolyExponentialGrid(TimeGrid):
    """k-diffusion's polyexponential spacing of $\\tilde\\sigma = e^{-\\lambda/2}$ with exponent
    ``rho`` (default 1, k-diffusion's; then it is `LogSNRGrid`, uniform in $\\log\\tilde\\sigma$):
    $\\log\\tilde\\sigma_i = \\log\\tilde\\sigma_{min} + (1 - \\tfrac{i}{n})^\\rho
    (\\log\\tilde\\sigma_{max} - \\log\\tilde\\sigma_{min})$; ``rho > 1`` puts more points near
    $t_\\text{end}$."""

    name = "polyexponential"

    def __init__(self, rho: float = 1.0) -> None:
        if not rho > 0:
            raise ValueError(f"rho must be positive, got {rho}")
        self.rho = float(rho)

    def _grid(self, sde: SDE, n: int, t_end: float) -> Tensor:
        lam = sde.log_snr(torch.tensor([sde.T, t_end], dtype=torch.float64))
        ramp = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64) ** self.rho
        return sde.log_snr_inverse(lam[1] + ramp * (lam[0] - lam[1]))   # lambda = -2 log(sigma~)

    def __repr__(self) -> str:
        return f"PolyExponentialGrid(rho={self.rho})"


GRIDS: dict[str, type[TimeGrid]] = {
    "uniform": UniformGrid, "quadratic": QuadraticGrid, "logsnr": LogSNRGrid,
    "karras": KarrasGrid, "polyexponential": PolyExponentialGrid,
}
"""Every registered time-grid rule, by name; `register_grid` adds one."""


def register_grid(name: str, cls: type[TimeGrid]) -> type[TimeGrid]:
    """Register a `TimeGrid` subclass (constructible without arguments) under `name`, so
    that `sample(grid=name)`, solver specs (`"ddim:grid=name"`) and the CLI know it."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a grid name must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, TimeGrid)):
        raise TypeError(f"register_grid needs a TimeGrid subclass, got {cls!r}")
    cls.name = name
    GRIDS[name] = cls
    return cls


def get_grid(grid: str | TimeGrid) -> TimeGrid:
    """A grid object from a name in ``GRIDS`` or a `TimeGrid` instance."""
    if isinstance(grid, TimeGrid):
        return grid
    if isinstance(grid, str) and grid in GRIDS:
        return GRIDS[grid]()
    raise ValueError(f"unknown time grid {grid!r}; known: {sorted(GRIDS)} or a TimeGrid instance")
