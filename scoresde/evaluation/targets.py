"""What samplers are compared on: a model and a way to draw target samples (`Target`), the
built-in exact Gaussian-mixture targets (a registry) and trained checkpoints (of a toy
distribution, or of an image data set: then the reference sets are held-out images and the
noise floor is real vs real between the training and the held-out split)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..analytic import GaussianMixture
from ..data import DATASETS, ImageSource, load_dataset, sample_toy
from ..models import ScoreModel
from ..sdes import SDE, VPSDE
from ..training.checkpoint import load_checkpoint, load_model

Tensor = torch.Tensor

__all__ = ["Target", "BUILTIN_TARGETS", "register_target", "builtin_target", "checkpoint_target"]


@dataclass
class Target:
    """What the samplers are compared on: a model, a way to draw target samples, and the
    exact mixture when the density is known.

    `sample(n, generator)` draws the reference sets. `floor_sample` (optional, same
    signature) draws the first set of each noise-floor pair, the second coming from
    `sample`; by default both come from `sample` (independent exact sets). A fixed data set
    sets it to other real images than the reference's (its training split), so that the
    floor is real vs real between disjoint sets, as model samples vs reference images are.
    """

    name: str
    model: ScoreModel
    sample: Callable[[int, torch.Generator], Tensor]
    exact: GaussianMixture | None = None
    description: str = ""
    floor_sample: Callable[[int, torch.Generator], Tensor] | None = None


def _mixture(k: int, d: int, seed: int) -> GaussianMixture:
    return GaussianMixture.random(k, d, torch.Generator().manual_seed(seed), spread=1.5,
                                  min_std=0.15, max_std=0.6)


BUILTIN_TARGETS: dict[str, tuple[Callable[[], GaussianMixture], str]] = {
    "eight_gaussians": (GaussianMixture.eight_gaussians,
                        "8 Gaussians on a circle (scoresde.data.eight_gaussians), exact"),
    "mixture2d": (lambda: _mixture(4, 2, 0), "random 2-D mixture, 4 full-covariance components"),
    "mixture5d": (lambda: _mixture(3, 5, 1), "random 5-D mixture, 3 full-covariance components"),
}
"""The exact targets by name: (factory of the mixture, description); `register_target`
adds one."""


def register_target(name: str, make: Callable[[], GaussianMixture], description: str = "") -> None:
    """Register an exact target: `make()` returns the `GaussianMixture` (its exact score and
    density are then used by `compare`, the CLI's `--target` and the demo)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a target name must be a non-empty string, got {name!r}")
    if not callable(make):
        raise TypeError(f"make must be a callable returning a GaussianMixture, got {make!r}")
    BUILTIN_TARGETS[name] = (make, description or name)


def builtin_target(name: str = "eight_gaussians", sde: SDE | None = None) -> Target:
    """A built-in Gaussian-mixture target with its exact score (no training needed)."""
    if name not in BUILTIN_TARGETS:
        raise ValueError(f"unknown target {name!r}; built-in targets: {sorted(BUILTIN_TARGETS)}")
    make, desc = BUILTIN_TARGETS[name]
    gm = make()
    sde = sde or VPSDE()
    return Target(name=name, model=gm.as_model(sde),
                  sample=lambda n, g: gm.sample(n, g), exact=gm,
                  description=f"{desc}; exact score under {sde!r}")


def checkpoint_target(path: str | os.PathLike, data: str | None = None) -> Target:
    """A trained model from a checkpoint, compared with its data set (``data``, default: the
    one recorded in the checkpoint).

    For a toy distribution the reference sets are fresh samples of it (for
    ``eight_gaussians`` the exact density is known). For a fixed image data set (an
    `ImageSource`, e.g. ``"digits"``) they are drawn from its **held-out** split, without
    replacement (a size up to the split's), in the scaling the checkpoint records
    (``meta["scaling"]``, default ``"[-1,1]"``), and the noise floor pairs a draw from the
    **training** split with one from the held-out split (`Target.floor_sample`)."""
    model = load_model(path)
    meta = load_checkpoint(path).get("meta", {})
    data = data or meta.get("data")
    if data not in DATASETS:
        raise ValueError(f"checkpoint {str(path)!r} records no known toy data set (got {data!r}); "
                         f"pass one of {list(DATASETS)}")
    if isinstance(DATASETS[data], ImageSource):
        scaling = meta.get("scaling", "[-1,1]")
        train = load_dataset(data, "train", scaling=scaling)
        test = load_dataset(data, "test", scaling=scaling)
        return Target(name=f"{Path(path).name}:{data}", model=model,
                      sample=lambda n, g: test.sample(n, g),
                      floor_sample=lambda n, g: train.sample(n, g),
                      description=f"trained model {str(path)!r} vs held-out {data} images "
                                  f"({len(test)}; noise floor: training vs held-out images)")
    exact = GaussianMixture.eight_gaussians() if data == "eight_gaussians" else None
    return Target(name=f"{Path(path).name}:{data}", model=model,
                  sample=lambda n, g: sample_toy(data, n, generator=g), exact=exact,
                  description=f"trained model {str(path)!r} vs held-out {data} samples")
