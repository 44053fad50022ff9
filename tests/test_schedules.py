"""Discrete DDPM schedules, and DDPM as the VP-SDE on a grid (Ho et al. 2020)."""

import numpy as np
import pytest
import torch
from oracle import fit_slope

import scoresde as sd


def test_vp_discretize_1000_is_ddpm_linspace():
    sch = sd.VPSDE().discretize(1000)
    ref = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert sch.betas.dtype == torch.float64 and sch.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(sch.betas, ref, rtol=0, atol=1e-15)
    # and the DESIGN.md formula for any N
    n = 37
    i = torch.arange(n, dtype=torch.float64)
    torch.testing.assert_close(sd.VPSDE(0.1, 20.0).discretize(n).betas,
                               0.1 / n + i / (n - 1) * 19.9 / n, rtol=0, atol=1e-15)


def test_schedule_arrays():
    betas = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    sch = sd.DiscreteSchedule(betas)
    acp = torch.tensor([0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7], dtype=torch.float64)
    torch.testing.assert_close(sch.alphas_cumprod, acp)
    prev = torch.tensor([1.0, 0.9, 0.72], dtype=torch.float64)
    torch.testing.assert_close(sch.posterior_variance, betas * (1 - prev) / (1 - acp))
    torch.testing.assert_close(sch.times, torch.tensor([1 / 3, 2 / 3, 1.0], dtype=torch.float64))
    assert sch.time_to_index(torch.tensor([1 / 3, 1.0])).tolist() == [0, 2]
    torch.testing.assert_close(sch.index_to_time(torch.tensor([0, 2])), sch.times[[0, 2]])


def test_discrete_alphas_cumprod_converge_to_continuous_first_order():
    # DDPM's linear betas give alphas_cumprod[i] = alpha(t_i)^2 (1 + O(1/N)).
    # (The cosine and from_schedule discretisations are exact at the grid by construction.)
    sde = sd.VPSDE()
    ns = [100, 200, 400, 800, 1600]
    errs = []
    for n in ns:
        sch = sde.discretize(n)
        cont = sde.alpha(sch.times) ** 2
        errs.append((torch.log(sch.alphas_cumprod) - torch.log(cont)).abs().max().item())
    assert errs[-1] < errs[0] / 10
    order = fit_slope(1 / np.array(ns), errs)
    assert 0.9 < order < 1.1, (order, errs)


def test_cosine_discretize_is_nichol_dhariwal_ratio():
    sde = sd.VPSDE.cosine()
    n = 1000
    sch = sde.discretize(n)
    t = torch.arange(n + 1, dtype=torch.float64) / n
    abar = sde.alpha(t) ** 2
    torch.testing.assert_close(sch.betas, 1 - abar[1:] / abar[:-1], rtol=1e-10, atol=1e-14)


def test_from_schedule_is_exact_embedding():
    sch = sd.VPSDE().discretize(50)
    sde = sd.VPSDE.from_schedule(sch)
    torch.testing.assert_close(sde.alpha(sch.times) ** 2, sch.alphas_cumprod, rtol=1e-13, atol=0)
    assert sde.discretize(50) is sch
    # its beta is continuous and quadratic inside each cell, with mean -N log(1 - beta_i) over
    # cell i (two-point Gauss-Legendre is exact for quadratics)
    left, off = torch.arange(50, dtype=torch.float64) / 50, 0.5 / (50 * 3 ** 0.5)
    mean = 0.5 * (sde.diffusion(left + 0.5 / 50 - off) ** 2 + sde.diffusion(left + 0.5 / 50 + off) ** 2)
    torch.testing.assert_close(mean, -50 * torch.log1p(-sch.betas), rtol=1e-12, atol=0)
    # and discretising it with another N is consistent with the generic rule
    coarse = sde.discretize(10)
    torch.testing.assert_close(coarse.alphas_cumprod, sde.alpha(coarse.times) ** 2)


def test_bad_schedules():
    with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
        sd.DiscreteSchedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="1-d"):
        sd.DiscreteSchedule(torch.ones(2, 2) * 0.1)
    with pytest.raises(ValueError, match="N must be an integer"):
        sd.VPSDE().discretize(0)
    with pytest.raises(ValueError, match="too few steps"):
        sd.VPSDE().discretize(10)
    sch = sd.VPSDE().discretize(30)
    with pytest.raises(ValueError, match="grid index"):
        sch.index_to_time(30)
