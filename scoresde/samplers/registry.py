"""The one solver registry: a name -> class dict, and the decorator that fills it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .base import Solver

__all__ = ["SOLVERS", "register_solver", "make_solver"]

#: every registered solver class, by name
SOLVERS: dict[str, type[Solver]] = {}

S = TypeVar("S", bound=type[Solver])


def register_solver(name: str, cls: type[Solver] | None = None) -> Any:
    """Register a solver class under ``name``: ``register_solver("mine", Mine)`` or as a class
    decorator ``@register_solver("mine")``. Re-registering a name replaces it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a solver name must be a non-empty string, got {name!r}")

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


Factory = Callable[..., Solver]
