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

- `PerSDEGrid`: one of the rules above chosen by the SDE (a solver's `default_grid` may be
  one: the best rule for that solver on each SDE, chosen by measurement).
- `PerStepsGrid`: one of the rules above chosen by the number of steps (a `PerSDEGrid`'s rule
  for an SDE may be one, where the best rule measured changes with the budget).

An optimised grid (`scoresde.samplers.optimize_grid`, Align-Your-Steps-like) is a
`TimeGrid` too.

DPM-Solver's ``skip_type`` options ``"time_uniform"``, ``"time_quadratic"`` and ``"logSNR"``
(Lu et al. 2022) are `UniformGrid`, `QuadraticGrid` and `LogSNRGrid`; k-diffusion's
``get_sigmas_karras`` and ``get_sigmas_exponential`` are `KarrasGrid` and `LogSNRGrid`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch

from ..sdes import SDE, SDES
from ..validation import check_int

Tensor = torch.Tensor

__all__ = ["TimeGrid", "UniformGrid", "QuadraticGrid", "LogSNRGrid", "KarrasGrid",
           "PolyExponentialGrid", "PerSDEGrid", "PerStepsGrid", "GRIDS", "register_grid", "get_grid",
           "grid_label", "sde_names"]


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

    def for_sde(self, sde: SDE) -> TimeGrid:
        """The rule this grid uses on ``sde``: itself, except for a `PerSDEGrid`."""
        return self

    def for_steps(self, n_steps: int) -> TimeGrid:
        """The rule this grid uses for ``n_steps`` steps: itself, except for a `PerStepsGrid`."""
        check_int("n_steps", n_steps, 1)
        return self

    @property
    def label(self) -> str:
        """A short name for tables and reports: the registered name, with the parameters that
        differ from the default (e.g. ``"polyexponential(rho=2)"``)."""
        return self.name or type(self).__name__

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

    @property
    def label(self) -> str:
        return self.name if self.rho == 7.0 else f"{self.name}(rho={self.rho:g})"

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

    @property
    def label(self) -> str:
        return self.name if self.rho == 1.0 else f"{self.name}(rho={self.rho:g})"

    def __repr__(self) -> str:
        return f"PolyExponentialGrid(rho={self.rho})"


def sde_names(sde: SDE) -> list[str]:
    """The registry names (`SDES`) of ``sde``'s class and of its registered base classes,
    nearest first: ``["vp_cosine", "vp"]`` for `VPSDE.cosine()`, ``[]`` for an SDE whose
    class and bases are all unregistered."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an SDE, got {type(sde).__name__}")
    return [name for cls in type(sde).__mro__ for name, c in SDES.items() if c is cls]


class PerSDEGrid(TimeGrid):
    """A grid rule chosen by the SDE: ``rules`` maps SDE registry names (`SDES`: ``"vp"``,
    ``"subvp"``, ``"ve"``, ...) to grids (names in `GRIDS` or `TimeGrid` instances, a
    `PerStepsGrid` included, but not another `PerSDEGrid`); an SDE whose class is not listed
    uses the rule of its nearest listed registered base class (`sde_names`: a cosine VP-SDE
    uses ``"vp"``'s), else ``fallback``.

    Solvers declare their measured per-SDE defaults with it, e.g.
    ``default_grid = PerSDEGrid({"ve": "karras"}, fallback="quadratic")``.
    """

    name = "per_sde"

    def __init__(self, rules: Mapping[str, str | TimeGrid], fallback: str | TimeGrid) -> None:
        if not isinstance(rules, Mapping):
            raise TypeError(f"rules must be a mapping of SDE names to grids, got {type(rules).__name__}")
        self.rules: dict[str, TimeGrid] = {}
        for key, grid in rules.items():
            if not isinstance(key, str):
                raise TypeError(f"a rule's key must be an SDE registry name, got {key!r}")
            if key not in SDES:
                raise ValueError(f"unknown SDE {key!r} in a PerSDEGrid; registered: {sorted(SDES)}")
            self.rules[key] = self._rule(grid)
        self.fallback = self._rule(fallback)

    @staticmethod
    def _rule(grid: str | TimeGrid) -> TimeGrid:
        g = get_grid(grid)
        if isinstance(g, PerSDEGrid):
            raise TypeError("a PerSDEGrid's rules must be plain grids, not another PerSDEGrid")
        return g

    def for_sde(self, sde: SDE) -> TimeGrid:
        return next((self.rules[n] for n in sde_names(sde) if n in self.rules), self.fallback)

    def __call__(self, sde: SDE, n_steps: int, t_end: float) -> Tensor:
        return self.for_sde(sde)(sde, n_steps, t_end)

    def _grid(self, sde: SDE, n: int, t_end: float) -> Tensor:
        return self.for_sde(sde)._grid(sde, n, t_end)

    @property
    def label(self) -> str:
        def one(g: TimeGrid) -> str:
            return f"({g.label})" if isinstance(g, PerStepsGrid) else g.label

        parts = [f"{k}: {one(g)}" for k, g in self.rules.items()]
        return ", ".join([*parts, f"otherwise {one(self.fallback)}"])

    def __repr__(self) -> str:
        rules = ", ".join(f"{k!r}: {g!r}" for k, g in self.rules.items())
        return f"PerSDEGrid({{{rules}}}, fallback={self.fallback!r})"


class PerStepsGrid(TimeGrid):
    """A grid rule chosen by the number of steps $n$: ``rules`` maps step counts to grids
    (names in `GRIDS` or plain `TimeGrid` instances); $n$ steps use the rule of the smallest
    key $\\ge n$, and more steps than every key use ``otherwise``. For example
    ``PerStepsGrid({3: "karras"}, otherwise="uniform")`` is `KarrasGrid` for up to 3 steps
    and `UniformGrid` from 4.

    A solver's default rule on an SDE (a value of its `PerSDEGrid`) is one where the rule
    that measured best changes with the budget (experiments/default_grids.py): its keys lie
    midway between the step counts of the budgets measured, so fewer steps than the smallest
    budget's take that budget's rule, and more than the largest budget's the largest's.
    """

    name = "per_steps"

    def __init__(self, rules: Mapping[int, str | TimeGrid], otherwise: str | TimeGrid) -> None:
        if not isinstance(rules, Mapping):
            raise TypeError(f"rules must be a mapping of step counts to grids, got {type(rules).__name__}")
        if not rules:
            raise ValueError("a PerStepsGrid needs at least one rule (else use `otherwise` itself)")
        steps = {check_int("a PerStepsGrid's step count", k, 1): self._rule(g) for k, g in rules.items()}
        self.rules: dict[int, TimeGrid] = dict(sorted(steps.items()))
        self.otherwise = self._rule(otherwise)

    @staticmethod
    def _rule(grid: str | TimeGrid) -> TimeGrid:
        g = get_grid(grid)
        if isinstance(g, PerSDEGrid | PerStepsGrid):
            raise TypeError(f"a PerStepsGrid's rules must be plain grids, not a {type(g).__name__}")
        return g

    def for_steps(self, n_steps: int) -> TimeGrid:
        n = check_int("n_steps", n_steps, 1)
        return next((g for k, g in self.rules.items() if n <= k), self.otherwise)

    def __call__(self, sde: SDE, n_steps: int, t_end: float) -> Tensor:
        return self.for_steps(n_steps)(sde, n_steps, t_end)

    def _grid(self, sde: SDE, n: int, t_end: float) -> Tensor:
        return self.for_steps(n)._grid(sde, n, t_end)

    @property
    def label(self) -> str:
        """E.g. ``"karras up to 3 steps then uniform"`` (no commas: tables list labels with them)."""
        parts = [f"{g.label} up to {k} step{'s' if k > 1 else ''}" for k, g in self.rules.items()]
        return " then ".join([*parts, self.otherwise.label])

    def __repr__(self) -> str:
        rules = ", ".join(f"{k}: {g!r}" for k, g in self.rules.items())
        return f"PerStepsGrid({{{rules}}}, otherwise={self.otherwise!r})"


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


def grid_label(grid: str | TimeGrid, sde: SDE, n_steps: int | None = None) -> str:
    """The label of the rule ``grid`` uses on ``sde`` (a `PerSDEGrid` resolved to its rule for
    that SDE) and, given ``n_steps``, for that many steps (a `PerStepsGrid` resolved too):
    what the comparison records as the grid it used."""
    g = get_grid(grid).for_sde(sde)
    return (g if n_steps is None else g.for_steps(n_steps)).label
