"""The one network registry: a name -> class dict, and the decorator that fills it.

A registered network class has `config()` (JSON-able constructor arguments) and a class
method `from_config(cfg)`, so a checkpoint stores the class's name and `config()` instead of
pickled code, and [`load_model`][scoresde.training.checkpoint.load_model] rebuilds it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

__all__ = ["NETS", "register_net", "get_net_class", "net_from_config"]

NETS: dict[str, type[nn.Module]] = {}
"""Every registered network class, by name (`"mlp"`: `MLPScoreNet`, `"unet"`: `UNet`)."""

N = TypeVar("N", bound=type)


def register_net(name: str, cls: type[nn.Module] | None = None) -> Any:
    """Register a network class under `name`: `register_net("mine", MyNet)` or as a class
    decorator `@register_net("mine")`. The class must be an `nn.Module` with `config()` and
    a class method `from_config(cfg)`. Re-registering a name replaces it."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a network name must be a non-empty string, got {name!r}")

    def add(c: N) -> N:
        if not (isinstance(c, type) and issubclass(c, nn.Module)):
            raise TypeError(f"register_net needs an nn.Module subclass, got {c!r}")
        missing = [m for m in ("config", "from_config") if not callable(getattr(c, m, None))]
        if missing:
            raise TypeError(f"network class {c.__name__} lacks {missing}: a registered network "
                            "needs config() and the class method from_config(cfg)")
        NETS[name] = c
        return c

    return add(cls) if cls is not None else add


def get_net_class(name: object) -> type[nn.Module] | None:
    """The registered class called `name` (a registry name or a class name), or None."""
    if not isinstance(name, str):
        return None
    if name in NETS:
        return NETS[name]
    return next((c for c in NETS.values() if c.__name__ == name), None)


def net_from_config(name: str, cfg: dict[str, Any]) -> nn.Module:
    """A fresh network of the registered class `name` built from its `config()`."""
    cls = get_net_class(name)
    if cls is None:
        raise ValueError(f"unknown network {name!r}; registered: {sorted(NETS)} (register a "
                         "user's network with sd.register_net, e.g. from a module given to the "
                         "CLI with --import, or pass net= to load_model)")
    return cls.from_config(cfg)  # type: ignore[attr-defined]
