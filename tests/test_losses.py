"""DSM and DDPM losses: DDPM's L_simple is DSM with sigma^2 weighting, shown exactly, and
both losses' expectations match closed forms for a linear eps-network."""

import numpy as np
import pytest
import torch
from oracle import random_gm
from scipy import integrate

import scoresde as sd

N_MC = 200_000


def _linear_eps_model(sde, c):
    return sd.ScoreModel(lambda x, t: c * x, sde, prediction="eps")


def _m2(gm):
    """E|x0|^2 / D for the mixture."""
    second = (gm.weights * ((gm.means ** 2).sum(1)
                            + torch.diagonal(gm.covs, dim1=1, dim2=2).sum(1))).sum()
    return float(second) / gm.dim


def _per_t(sde, c, m2, t):
    """E over x0, eps of mean_d (c x_t - eps)^2 at time t, in closed form."""
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = sde.alpha(tt).item(), sde.sigma(tt).item()
    return c ** 2 * a ** 2 * m2 + (c * s - 1) ** 2


def _within(samples, expected, k=4.0):
    mean = samples.mean().item()
    se = samples.std().item() / np.sqrt(samples.numel())
    assert abs(mean - expected) < k * se, (mean, expected, se)


@pytest.mark.parametrize("weighting,importance", [("sigma2", False), ("likelihood", False),
                                                  ("likelihood", True), ("none", False)])
def test_dsm_expectation_matches_closed_form(weighting, importance):
    sde, c = sd.VPSDE(), 0.6
    gm = random_gm(dim=3, k=2, seed=0)
    eps = 1e-2 if weighting == "none" else sde.train_eps
    g = torch.Generator().manual_seed(1)
    x0 = gm.sample(N_MC, g, dtype=torch.float64)
    per = sd.dsm_loss(_linear_eps_model(sde, c), x0, weighting, g, eps=eps,
                      importance_sampling=importance, reduction="none")
    assert per.shape == (N_MC,)
    m2 = _m2(gm)

    def w_over_s2(t):
        tt = torch.tensor(t, dtype=torch.float64)
        if weighting == "sigma2":
            return 1.0
        if weighting == "likelihood":
            return (sde.diffusion(tt) ** 2 / sde.sigma(tt) ** 2).item()
        return 1.0 / sde.sigma(tt).item() ** 2

    val, _ = integrate.quad(lambda t: w_over_s2(t) * _per_t(sde, c, m2, t), eps, 1.0,
                            limit=200, points=[0.01, 0.1])
    _within(per, val / (1.0 - eps))


def test_importance_sampling_density_and_lower_variance():
    sde = sd.VPSDE()
    g = torch.Generator().manual_seed(0)
    t, iw = sd.losses.sample_time(sde, 100_000, importance_sampling=True, generator=g,
                                  dtype=torch.float64)
    # q(t) = -lambda'(t)/Z, so lambda(t) is uniform on [lambda(T), lambda(eps)]
    lam = sde.log_snr(t)
    lo, hi = sde.log_snr(1.0).double().item(), sde.log_snr(sde.train_eps).double().item()
    u = (hi - lam) / (hi - lo)
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    torch.testing.assert_close(iw, torch.full_like(iw, (hi - lo) / (1 - sde.train_eps)))
    gm, model = random_gm(dim=2, seed=3), _linear_eps_model(sde, 0.5)
    x0 = gm.sample(50_000, g, dtype=torch.float64)
    a = sd.dsm_loss(model, x0, "likelihood", g, reduction="none")
    b = sd.dsm_loss(model, x0, "likelihood", g, importance_sampling=True, reduction="none")
    assert b.var() < 0.1 * a.var()


def test_ddpm_loss_expectation_matches_closed_form():
    sch = sd.VPSDE().discretize(1000)
    c = 0.6
    gm = random_gm(dim=3, k=2, seed=0)
    model = _linear_eps_model(sd.VPSDE.from_schedule(sch), c)
    g = torch.Generator().manual_seed(2)
    x0 = gm.sample(N_MC, g, dtype=torch.float64)
    per = sd.ddpm_loss(model, x0, sch, g, reduction="none")
    acp = sch.alphas_cumprod
    exact = (c ** 2 * acp * _m2(gm) + (c * (1 - acp).sqrt() - 1) ** 2).mean().item()
    _within(per, exact)


def test_ddpm_loss_equals_dsm_sigma2_on_the_discrete_noise_levels():
    """Ho et al.'s L_simple is DSM with lambda = sigma^2 and eps-prediction, evaluated at the
    schedule's noise levels: identical numbers for identical draws."""
    sch = sd.VPSDE().discretize(1000)
    sde = sd.VPSDE.from_schedule(sch)
    net = sd.nets.MLPScoreNet(dim=2, generator=torch.Generator().manual_seed(0)).double()
    model = sd.ScoreModel(net, sde, prediction="eps")
    g = torch.Generator().manual_seed(3)
    x0 = sd.data.sample_toy("moons", 512, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 1000, (512,), generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    ddpm = sd.ddpm_loss(model, x0, sch, indices=idx, noise=noise, reduction="none")
    dsm = sd.dsm_loss(model, x0, "sigma2", t=sch.times[idx], noise=noise, reduction="none")
    torch.testing.assert_close(dsm, ddpm, rtol=1e-12, atol=1e-14)
    # and with a generator, the same draws give the same losses run to run
    l1 = sd.ddpm_loss(model, x0, sch, torch.Generator().manual_seed(7))
    l2 = sd.ddpm_loss(model, x0, sch, torch.Generator().manual_seed(7))
    assert torch.equal(l1, l2)


def test_sigma2_loss_is_exact_eps_mse_for_every_prediction_type():
    sde = sd.SubVPSDE()
    gm = random_gm(dim=2, seed=5)
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(64, g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    model = gm.as_model(sde)   # score prediction
    loss = sd.dsm_loss(model, x0, t=t, noise=noise, reduction="none")
    x_t = sde.perturb(x0, t, noise)
    eps_hat = -sde.sigma(t)[:, None] * gm.score(x_t, t, sde)
    torch.testing.assert_close(loss, ((eps_hat - noise) ** 2).mean(1))


def test_bad_inputs():
    sde = sd.VPSDE()
    model = _linear_eps_model(sde, 1.0)
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="weighting must be one of"):
        sd.dsm_loss(model, x0, "uniform")
    with pytest.raises(ValueError, match="importance_sampling=True needs"):
        sd.dsm_loss(model, x0, "sigma2", importance_sampling=True)
    with pytest.raises(ValueError, match="reduction"):
        sd.dsm_loss(model, x0, reduction="sum")
    with pytest.raises(ValueError, match="outside the time range"):
        sd.dsm_loss(model, x0, t=torch.full((4,), 1.5))
    with pytest.raises(ValueError, match="noise shape"):
        sd.dsm_loss(model, x0, noise=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="eps must lie"):
        sd.dsm_loss(model, x0, eps=1.0)
    sch = sde.discretize(100)
    with pytest.raises(ValueError, match="eps-prediction"):
        sd.ddpm_loss(sd.ScoreModel(lambda x, t: x, sde, "score"), x0, sch)
    with pytest.raises(ValueError, match="indices must lie"):
        sd.ddpm_loss(model, x0, sch, indices=torch.tensor([0, 1, 2, 100]))
