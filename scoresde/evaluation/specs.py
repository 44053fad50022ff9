"""Solver specifications for comparisons and the command line: ``"name"`` or
``"name:key=value,..."`` (options of the registered solver, plus ``grid=`` and
``adaptive=1``)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from ..samplers import SOLVERS, Solver, adaptive_solvers, make_solver

__all__ = ["SolverSpec", "default_solvers"]


@dataclass
class SolverSpec:
    """A solver with options, parsed from ``"name"`` or ``"name:key=value,key=value"``.

    ``grid=...`` selects the time grid (default: the solver's own `default_grid`);
    ``adaptive=1`` asks for an adaptive solve (solvers declaring `adaptive_capable`), which
    ignores the budget list.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    grid: str | None = None
    adaptive: bool = False

    @classmethod
    def parse(cls, text: str) -> SolverSpec:
        name, _, rest = text.partition(":")
        if name not in SOLVERS:
            raise ValueError(f"unknown solver {name!r}; registered solvers: {sorted(SOLVERS)}")
        opts: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, eq, val = item.partition("=")
            if not eq:
                raise ValueError(f"solver option {item!r} in {text!r} is not key=value")
            try:
                opts[key.strip()] = ast.literal_eval(val.strip())
            except (ValueError, SyntaxError):
                opts[key.strip()] = val.strip()
        grid = opts.pop("grid", None)
        grid = None if grid is None else str(grid)
        adaptive = bool(opts.pop("adaptive", False))
        if adaptive and not SOLVERS[name].adaptive_capable:
            raise ValueError(f"solver {name!r} has no adaptive mode (adaptive solvers: "
                             f"{adaptive_solvers()})")
        spec = cls(name, opts, grid, adaptive)
        spec.make()  # validate the options now, not in the middle of a run
        return spec

    def make(self) -> Solver:
        """The solver instance (options validated by the registry)."""
        return make_solver(self.name, **self.options)

    @property
    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.options.items()]
        if self.grid is not None:
            parts.append(f"grid={self.grid}")
        if self.adaptive:
            parts.append("adaptive")
        return self.name + (f"[{','.join(parts)}]" if parts else "")


def default_solvers() -> list[SolverSpec]:
    """The comparison's default line-up, read from the registry: each registered solver's
    `comparison_specs` (every fixed-grid solver with its default options; ``pf_ode`` with
    rk4 and adaptive), in registration order."""
    specs = []
    for name, cls in SOLVERS.items():
        for opts in cls.comparison_specs:
            opts = dict(opts)
            grid = opts.pop("grid", None)
            adaptive = bool(opts.pop("adaptive", False))
            specs.append(SolverSpec(name, opts, grid, adaptive))
    return specs
