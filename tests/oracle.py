"""Analytic test problems shared by the whole suite (one place, imported by every test)."""

from __future__ import annotations

import numpy as np
import torch

import scoresde as sd

SDE_FACTORIES = {
    "vp": lambda: sd.VPSDE(),
    "vp_cosine": lambda: sd.VPSDE.cosine(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(),
}


def make_sde(name: str) -> sd.SDE:
    return SDE_FACTORIES[name]()


def random_gm(dim: int = 2, k: int = 3, seed: int = 0, **kw) -> sd.analytic.GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return sd.analytic.GaussianMixture.random(k, dim, g, **kw)


def fit_slope(x, y) -> float:
    """Least-squares slope of log(y) against log(x): the empirical convergence order."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
