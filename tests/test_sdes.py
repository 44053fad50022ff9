"""Forward SDEs: internal consistency of f, g, alpha, sigma, log-SNR, against closed forms."""

import math

import pytest
import torch
from oracle import SDE_FACTORIES, make_sde

import scoresde as sd

NAMES = list(SDE_FACTORIES)
T64 = torch.linspace(0.003, 0.997, 41, dtype=torch.float64)


def _grad(fn, t):
    t = t.clone().requires_grad_(True)
    (y,) = torch.autograd.grad(fn(t).sum() + 0 * t.sum(), t)
    return y


@pytest.mark.parametrize("name", NAMES)
def test_drift_is_dlogalpha_dt(name):
    sde = make_sde(name)
    dlog_alpha = _grad(lambda t: torch.log(sde.alpha(t)), T64)
    f = sde.drift(torch.ones(len(T64), 1, dtype=torch.float64), T64)[:, 0]
    torch.testing.assert_close(f, dlog_alpha, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_diffusion_matches_variance_growth(name):
    # g^2 = d sigma^2/dt - 2 f sigma^2, the ODE of the perturbation kernel's variance
    sde = make_sde(name)
    ds2 = _grad(lambda t: sde.sigma(t) ** 2, T64)
    f = sde.drift(torch.ones(len(T64), 1, dtype=torch.float64), T64)[:, 0]
    g2 = sde.diffusion(T64) ** 2
    torch.testing.assert_close(g2, ds2 - 2 * f * sde.sigma(T64) ** 2, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_definition_monotonicity_and_inverse(name):
    sde = make_sde(name)
    lam = sde.log_snr(T64)
    torch.testing.assert_close(lam, torch.log(sde.alpha(T64) ** 2 / sde.sigma(T64) ** 2),
                               rtol=1e-10, atol=1e-10)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease in t"
    torch.testing.assert_close(sde.log_snr_inverse(lam), T64, rtol=1e-9, atol=1e-11)


def test_vp_closed_forms():
    sde = sd.VPSDE(beta_min=0.1, beta_max=20.0)
    t = T64
    b_int = 0.1 * t + 0.5 * t ** 2 * 19.9
    torch.testing.assert_close(sde.alpha(t), torch.exp(-0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1))
    torch.testing.assert_close(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(sde.diffusion(t), torch.sqrt(0.1 + t * 19.9))
    torch.testing.assert_close(sde.sigma(t), torch.sqrt(1 - torch.exp(-b_int)))


def test_subvp_and_ve_closed_forms():
    t = T64
    sub = sd.SubVPSDE()
    torch.testing.assert_close(sub.sigma(t), 1 - sub.alpha(t) ** 2)
    assert bool((sub.alpha(t) ** 2 + sub.sigma(t) ** 2 <= 1 + 1e-12).all())
    ve = sd.VESDE(sigma_min=0.01, sigma_max=50.0)
    torch.testing.assert_close(ve.sigma(t), 0.01 * (50 / 0.01) ** t)
    torch.testing.assert_close(ve.alpha(t), torch.ones_like(t))
    torch.testing.assert_close(ve.diffusion(t), ve.sigma(t) * math.sqrt(2 * math.log(5000)))
    assert ve.prior_std == 50.0 and ve.sample_eps == 1e-5 and sub.sample_eps == 1e-3


def test_cosine_matches_nichol_dhariwal_before_clip_and_is_clipped_after():
    s = 0.008
    sde = sd.VPSDE.cosine(s=s, beta_clip=20.0)
    t = torch.linspace(0.0, sde.t_clip - 1e-6, 50, dtype=torch.float64)
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / math.cos(s / (1 + s) * math.pi / 2) ** 2
    torch.testing.assert_close(sde.alpha(t) ** 2, abar, rtol=1e-12, atol=1e-14)
    late = torch.linspace(sde.t_clip + 1e-6, 1.0, 10, dtype=torch.float64)
    torch.testing.assert_close(sde.diffusion(late) ** 2, torch.full_like(late, 20.0))
    # beta is continuous at the clip point
    eps = torch.tensor([sde.t_clip - 1e-9, sde.t_clip + 1e-9], dtype=torch.float64)
    b = sde.diffusion(eps) ** 2
    assert abs(b[0].item() - b[1].item()) < 1e-5
    assert 0.85 < sde.t_clip < 0.95
    assert isinstance(sde, sd.VPSDE)


@pytest.mark.parametrize("name", NAMES)
def test_marginal_prob_perturb_prior(name):
    sde = make_sde(name)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.rand(4, generator=g)
    mean, std = sde.marginal_prob(x0, t)
    assert mean.shape == x0.shape and std.shape == (4,)
    noise = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(sde.perturb(x0, t, noise), mean + std.reshape(4, 1, 1, 1) * noise)
    z = sde.prior_sample((6, 3, 8, 8), torch.Generator().manual_seed(2))
    assert z.shape == (6, 3, 8, 8)
    ref = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).sum(dim=(1, 2, 3))
    torch.testing.assert_close(sde.prior_logp(z), ref, rtol=1e-5, atol=1e-3)
    z2 = sde.prior_sample((6, 3, 8, 8), torch.Generator().manual_seed(2))
    assert torch.equal(z, z2)


def test_scalar_time_and_dtype_follow_x():
    sde = sd.VPSDE()
    x = torch.randn(3, 2, dtype=torch.float64)
    out = sde.drift(x, 0.5)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert sde.alpha(0.5).dtype == torch.get_default_dtype()


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    sde = make_sde(name)
    again = sd.sde_from_config(sde.config())
    assert type(again) is type(sde) and again.config() == sde.config()
    torch.testing.assert_close(again.sigma(T64), sde.sigma(T64))


def test_bad_inputs():
    with pytest.raises(ValueError, match="beta_min must be < beta_max"):
        sd.VPSDE(beta_min=20.0, beta_max=0.1)
    with pytest.raises(ValueError, match="beta_min must be < beta_max"):
        sd.SubVPSDE(beta_min=1.0, beta_max=1.0)
    with pytest.raises(ValueError, match="finite positive"):
        sd.VPSDE(beta_min=-0.1)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        sd.VESDE(sigma_min=5.0, sigma_max=1.0)
    sde = sd.VPSDE()
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"outside the time range \[0, T\]"):
        sde.drift(x, torch.tensor([0.1, 1.5, 0.2]))
    with pytest.raises(ValueError, match="outside the time range"):
        sde.alpha(-0.1)
    with pytest.raises(ValueError, match="B=3"):
        sde.drift(x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="shape"):
        sde.sigma(torch.zeros(2, 2))
    with pytest.raises(TypeError):
        sde.sigma("0.5")
    with pytest.raises(ValueError, match="score shape"):
        sd.dynamics.reverse_drift(sde, x, 0.5, torch.zeros(3, 3))
    with pytest.raises(NotImplementedError, match="variance-preserving"):
        sd.VESDE().discretize(10)
    with pytest.raises(ValueError, match="unknown SDE 'Nope'.*registered"):
        sd.sde_from_config({"name": "Nope"})


@pytest.mark.parametrize("name", NAMES)
def test_float32_coefficients_match_float64_down_to_tiny_times(name):
    # regression: the cosine VP's sigma lost all digits in float32 below t ~ 1e-6 (6.6% error
    # at 1e-7... 195%) because B(t) was a difference of two logs
    sde = make_sde(name)
    t64 = torch.logspace(-7, 0, 400, dtype=torch.float64)
    t32 = t64.float()
    ref = t32.double()                   # the float32 times, exactly, evaluated in float64
    for fn in ("sigma", "alpha"):
        a, b = getattr(sde, fn)(t32).double(), getattr(sde, fn)(ref)
        assert a.dtype == torch.float64 and getattr(sde, fn)(t32).dtype == torch.float32
        rel = ((a - b).abs() / b.abs()).max().item()
        assert rel < 2e-6, f"{fn}: float32 relative error {rel:.2e}"
    torch.testing.assert_close(sde.log_snr(t32).double(), sde.log_snr(ref), rtol=1e-5, atol=2e-5)


def test_cosine_inverse_is_accurate_near_zero():
    sde = sd.VPSDE.cosine()
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 2e-6)):
        t = torch.logspace(-7, 0, 300, dtype=dtype)
        back = sde.beta_integral_inverse(sde.beta_integral(t))
        assert ((back - t).abs() / t).max().item() < tol
