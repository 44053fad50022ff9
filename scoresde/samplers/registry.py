"""The one solver registry: a name -> class dict, and the decorator that fills it.

Each class declares what the comparison and the docs need (see `Solver`): `order`,
`stochastic`, `nfe_for_steps`/`cost_formula`, `adaptive_capable` and `default_grid`;
`solver_table` lists them for every registered solver."""

from __future__ import annotations

from typing import Any, TypeVar

from .base import Solver
from .grids import get_grid

__all__ = ["SOLVERS", "register_solver", "make_solver", "adaptive_solvers", "solver_table"]

SOLVERS: dict[str, type[Solver]] = {}
"""Every registered solver class, by name."""

S = TypeVar("S", bound=type[Solver])


def register_solver(name: str, cls: type[Solver] | None = None) -> Any:
    """Register a solver class under ``name``: ``register_solver("mine", Mine)`` or as a class
    decorator ``@register_solver("mine")``. Re-registering a name replaces it."""
    if not isinstance(name, str):
        raise TypeError(f"a solver name must be a non-empty string, got {type(name).__name__}")
    if not name:
        raise ValueError("a solver name must be a non-empty string, got ''")

    def add(c: S) -> S:
        if not (isinstance(c, type) and issubclass(c, Solver)):
            raise TypeError(f"register_solver needs a Solver subclass, got {c!r}")
        c.name = name
        SOLVERS[name] = c
        return c

    return add(cls) if cls is not None else add


def make_solver(solver: str | Solver, **options: Any) -> Solver:
    """A solver instance from a registered name and its options, or an instance as is."""
    if isinstance(solver, Solver):
        if options:
            raise TypeError(f"options {sorted(options)} given with a solver instance; set them "
                            "on the instance instead")
        return solver
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; registered solvers: {sorted(SOLVERS)}")
    cls = SOLVERS[solver]
    allowed = cls.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"solver {solver!r} got unknown option(s) {unknown}; "
                        f"it accepts {allowed}")
    return cls(**options)


def adaptive_solvers() -> list[str]:
    """Names of the registered solvers that can run with ``nfe=None`` (adaptive steps)."""
    return [n for n, c in SOLVERS.items() if c.adaptive_capable]


def solver_table() -> list[dict[str, Any]]:
    """One dict per registered solver with default options: name, class, order,
    stochastic, cost formula, adaptive capability and default grid (for docs and CLIs; its
    label, e.g. ``"quadratic"``, or each SDE's rule for a `PerSDEGrid`)."""
    rows = []
    for name, cls in SOLVERS.items():
        try:
            s = cls()
        except TypeError:  # a solver whose constructor needs arguments
            s = None
        rows.append({"name": name, "class": cls.__name__,
                     "order": getattr(s, "order", cls.order),
                     "stochastic": getattr(s, "stochastic", cls.stochastic),
                     "cost": s.cost_formula() if s is not None else "",
                     "adaptive": cls.adaptive_capable,
                     "default_grid": get_grid(getattr(s, "default_grid", cls.default_grid)).label})
    return rows
