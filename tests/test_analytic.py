"""The exact oracle: scores against autograd, densities against torch.distributions, and
marginals against a fine torchsde simulation of the forward SDE."""

import pytest
import torch
import torchsde
from oracle import SDE_FACTORIES, make_sde, random_gm

import scoresde as sd
from scoresde.analytic import GaussianMixture


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_score_is_gradient_of_marginal_log_prob(sde_name, dim):
    sde = make_sde(sde_name)
    gm = random_gm(dim=dim, k=3, seed=dim)
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(32, dim, generator=g, dtype=torch.float64)
    t = torch.rand(32, generator=g, dtype=torch.float64) * 0.99 + 0.005
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(gm.marginal_log_prob(xg, t, sde).sum(), xg)
    torch.testing.assert_close(gm.score(x, t, sde), auto, rtol=1e-9, atol=1e-9)


def test_log_prob_matches_torch_distributions():
    gm = random_gm(dim=4, k=3, seed=7)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gm.weights),
        torch.distributions.MultivariateNormal(gm.means, covariance_matrix=gm.covs))
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(gm.log_prob(x), mix.log_prob(x), rtol=1e-10, atol=1e-10)
    # VP at t = 0 (sigma = 0) is the data density itself
    torch.testing.assert_close(gm.marginal_log_prob(x, 0.0, sd.VPSDE()), gm.log_prob(x))
    # under any SDE, the marginal at t is the mixture N(alpha mu, alpha^2 S + sigma^2 I)
    sde, t = sd.SubVPSDE(), 0.37
    a, s = sde.alpha(t).double(), sde.sigma(t).double()
    mt = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gm.weights),
        torch.distributions.MultivariateNormal(
            a * gm.means, covariance_matrix=a ** 2 * gm.covs + s ** 2 * torch.eye(4)))
    torch.testing.assert_close(gm.marginal_log_prob(x, t, sde), mt.log_prob(x))


def test_sample_moments_and_event_shape():
    gm = random_gm(dim=3, k=4, seed=2)
    x = gm.sample(200_000, torch.Generator().manual_seed(3), dtype=torch.float64)
    se = (torch.diagonal(gm.covariance) / x.shape[0]).sqrt()
    assert bool(((x.mean(0) - gm.mean).abs() < 5 * se).all())
    torch.testing.assert_close(torch.cov(x.T), gm.covariance, rtol=0.03, atol=0.03)
    img = GaussianMixture(gm.weights, gm.means[:, :3], gm.covs, event_shape=(1, 3, 1))
    xi = img.sample(10, torch.Generator().manual_seed(0))
    assert xi.shape == (10, 1, 3, 1)
    assert img.score(xi, 0.5, sd.VPSDE()).shape == xi.shape
    a = gm.sample(5, torch.Generator().manual_seed(9))
    b = gm.sample(5, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def _simulate_forward(sde, x0, t1, dt):
    class Forward(torch.nn.Module):
        noise_type, sde_type = "additive", "ito"

        def f(self, t, y):
            return sde.drift(y, t)

        def g(self, t, y):
            return torch.diag_embed(sde.diffusion(t) * torch.ones_like(y))

    ts = torch.tensor([0.0, t1], dtype=x0.dtype)
    bm = torchsde.BrownianInterval(t0=0.0, t1=t1, size=x0.shape, dtype=x0.dtype,
                                   entropy=1234, levy_area_approximation="space-time")
    return torchsde.sdeint(Forward(), x0, ts, bm=bm, method="srk", dt=dt)[-1]


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
def test_marginals_match_torchsde_simulation(sde_name):
    sde = make_sde(sde_name)
    gm = random_gm(dim=2, k=2, seed=11)
    n = 20_000
    g = torch.Generator().manual_seed(5)
    x0 = gm.sample(n, g, dtype=torch.float64)
    # x(0) = alpha(0) x0 + sigma(0) eps (sigma(0) = sigma_min for VE, 0 otherwise)
    x0 = sde.perturb(x0, 0.0, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    t1 = 0.6
    xt = _simulate_forward(sde, x0, t1, dt=1e-2)
    mean, cov = gm.marginal_moments(t1, sde)
    var = torch.diagonal(cov)
    se_mean = (var / n).sqrt()
    assert bool(((xt.mean(0) - mean).abs() < 5 * se_mean).all()), (xt.mean(0), mean)
    se_cov = ((var[:, None] * var[None, :] + cov ** 2) / n).sqrt()
    assert bool(((torch.cov(xt.T) - cov).abs() < 5 * se_cov).all()), (torch.cov(xt.T), cov)


def test_eight_gaussians_oracle_matches_data_module():
    gm = GaussianMixture.eight_gaussians()
    x = sd.data.sample_toy("eight_gaussians", 100_000, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    se = (torch.diagonal(gm.covariance) / x.shape[0]).sqrt()
    assert bool(((x.mean(0) - gm.mean).abs() < 5 * se).all())
    torch.testing.assert_close(torch.cov(x.T), gm.covariance, rtol=0.03, atol=0.02)


def test_bad_inputs():
    w, mu, cov = torch.ones(2) / 2, torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2)
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(torch.ones(2), mu, cov)
    with pytest.raises(ValueError, match=r"covs must have shape"):
        GaussianMixture(w, mu, torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match="semi-definite"):
        GaussianMixture(w, mu, -torch.eye(2).expand(2, 2, 2))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture(w, mu, torch.tensor([[1.0, 0.5], [0.0, 1.0]]).expand(2, 2, 2))
    gm = GaussianMixture(w, mu, cov)
    with pytest.raises(ValueError, match="must have shape"):
        gm.score(torch.zeros(3, 3), 0.5, sd.VPSDE())
    with pytest.raises(ValueError, match="outside the time range"):
        gm.score(torch.zeros(3, 2), 2.0, sd.VPSDE())
