"""`VPSDE.from_schedule`: the continuous embedding of a DDPM schedule (B a monotone C1 cubic
Hermite interpolant of -log alphas_cumprod), exact at the grid, with a continuous beta that
adaptive solvers integrate at the smooth VP-SDE's rate (issue 17)."""

import pytest
import torch
from oracle import gen

import scoresde as sd

F64 = torch.float64


def _schedules():
    return {
        "ddpm1000": sd.DiscreteSchedule(torch.linspace(1e-4, 0.02, 1000, dtype=F64)),
        "linear50": sd.VPSDE().discretize(50),          # coarse and steep: the limiter acts
        "cosine": sd.VPSDE.cosine().discretize(1000),   # beta clipped: a kink in the data
        "rough37": sd.DiscreteSchedule(torch.rand(37, generator=gen(0), dtype=F64) * 0.2 + 1e-3),
        "n3": sd.DiscreteSchedule(torch.tensor([0.1, 0.5, 0.3], dtype=F64)),
        "n1": sd.DiscreteSchedule(torch.tensor([0.3], dtype=F64)),
    }


SCHEDULES = _schedules()
DENSE = torch.linspace(0.0, 1.0, 100_001, dtype=F64)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_exact_at_the_grid(name):
    sch = SCHEDULES[name]
    sde = sd.VPSDE.from_schedule(sch)
    # B(t_i) = -log alphas_cumprod[i] to one rounding, so alpha(t_i)^2 = alphas_cumprod[i]
    torch.testing.assert_close(sde.beta_integral(sch.times), -torch.log(sch.alphas_cumprod),
                               rtol=4e-16, atol=0)
    torch.testing.assert_close(sde.alpha(sch.times) ** 2, sch.alphas_cumprod, rtol=2e-15, atol=0)
    if name == "ddpm1000":   # here even bitwise
        assert torch.equal(sde.beta_integral(sch.times), -torch.log(sch.alphas_cumprod))
    assert float(sde.beta_integral(torch.tensor(0.0, dtype=F64))) == 0.0
    assert sde.discretize(sch.N) is sch
    # beta integrates exactly to the cell rates: the mean of the (quadratic) beta over cell i,
    # by two-point Gauss-Legendre, is N log(abar_{i-1}/abar_i) = -N log(1 - beta_i)
    n = sch.N
    mid, off = (torch.arange(n, dtype=F64) + 0.5) / n, 0.5 / (n * 3 ** 0.5)
    mean = 0.5 * (sde.beta(mid - off) + sde.beta(mid + off))
    rates = -n * torch.diff(torch.log(sch.alphas_cumprod), prepend=torch.zeros(1, dtype=F64))
    torch.testing.assert_close(mean, rates, rtol=1e-12, atol=0)
    torch.testing.assert_close(mean, -n * torch.log1p(-sch.betas), rtol=1e-11, atol=0)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_beta_positive_and_B_increasing(name):
    sde = sd.VPSDE.from_schedule(SCHEDULES[name])
    b, beta = sde.beta_integral(DENSE), sde.beta(DENSE)
    assert bool((beta > 0).all()), float(beta.min())
    assert bool((b[1:] > b[:-1]).all())
    assert sde.beta_min == float(beta[0]) and sde.beta_max >= float(beta.max()) - 1e-12
    assert sde.beta_max <= float(beta.max()) * (1 + 1e-6)


def test_knot_slopes_are_fourth_order_differences_of_the_cell_rates():
    # on DDPM's smooth schedule the monotonicity limiter never acts: beta(k/N) is the
    # five-point difference of the cell rates, and it stays close to its neighbours
    sch = SCHEDULES["ddpm1000"]
    sde = sd.VPSDE.from_schedule(sch)
    r = -1000 * torch.log1p(-sch.betas)
    knots = torch.arange(2, 999, dtype=F64) / 1000
    five_point = (7 * (r[1:-2] + r[2:-1]) - r[:-3] - r[3:]) / 12
    torch.testing.assert_close(sde.beta(knots), five_point, rtol=1e-12, atol=0)
    ratio = sde.beta(knots) / torch.minimum(r[1:-2], r[2:-1])
    assert bool((ratio > 0.8).all() & (ratio < 1.25).all())
    # and beta(0) extrapolates the rates: beta_min = 0.0900, beta_max = 20.21
    assert abs(sde.beta_min - 0.0900) < 5e-5 and abs(sde.beta_max - 20.21) < 5e-3


@pytest.mark.parametrize("name", ["ddpm1000", "linear50", "cosine", "rough37"])
def test_beta_is_continuous_and_is_dB_dt(name):
    sch = SCHEDULES[name]
    sde = sd.VPSDE.from_schedule(sch)
    knots = torch.arange(1, sch.N, dtype=F64) / sch.N
    rates = -sch.N * torch.log1p(-sch.betas)
    # the previous embedding jumped by the difference of neighbouring cell rates; now the
    # change across a knot, beta(k/N + e) - beta(k/N - e), vanishes like e (|beta'| bounded)
    jumps = [float((sde.beta(knots + e) - sde.beta(knots - e)).abs().max()) for e in (1e-6, 1e-9)]
    slope = float((sde.beta(DENSE[1:]) - sde.beta(DENSE[:-1])).abs().max() / DENSE[1])
    assert jumps[0] <= 2.5e-6 * slope and jumps[1] <= 2.5e-9 * slope, (jumps, slope)
    assert jumps[1] < 2e-3 * jumps[0]
    assert jumps[1] < 1e-5 * float((rates[1:] - rates[:-1]).abs().max())
    # beta = dB/dt (autograd through the cubic), so f, g and alpha, sigma stay consistent
    t = torch.rand(257, generator=gen(1), dtype=F64).requires_grad_(True)
    (db,) = torch.autograd.grad(sde.beta_integral(t).sum(), t)
    torch.testing.assert_close(db, sde.beta(t.detach()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_inverse_round_trips(name):
    sde = sd.VPSDE.from_schedule(SCHEDULES[name])
    b_end = float(sde.beta_integral(torch.tensor(1.0, dtype=F64)))
    b = torch.linspace(0.0, b_end, 20_001, dtype=F64)
    t = sde.beta_integral_inverse(b)
    assert bool((t >= 0).all() & (t <= 1).all())
    torch.testing.assert_close(sde.beta_integral(t), b, rtol=4e-16, atol=4e-16 * b_end)
    # t -> B -> t, to the conditioning of B (beta >= beta_min > 0 here)
    torch.testing.assert_close(sde.beta_integral_inverse(sde.beta_integral(DENSE)), DENSE,
                               rtol=0, atol=1e-12)
    # beyond the ends B continues linearly, and the inverse follows it
    out = torch.tensor([-0.25, 1.5], dtype=F64)
    torch.testing.assert_close(sde.beta_integral_inverse(sde.beta_integral(out)), out)
    # the log-SNR closed forms of VPSDE go through B and its inverse
    lam = sde.log_snr(DENSE[1:])
    torch.testing.assert_close(sde.log_snr_inverse(lam), DENSE[1:], rtol=0, atol=1e-12)


def test_float32_and_config_round_trip():
    sch = SCHEDULES["ddpm1000"]
    sde = sd.VPSDE.from_schedule(sch)
    t32 = DENSE.float()
    b32, beta32 = sde.beta_integral(t32), sde.beta(t32)
    assert b32.dtype == beta32.dtype == torch.float32
    torch.testing.assert_close(b32.double(), sde.beta_integral(t32.double()), rtol=2e-7, atol=1e-7)
    torch.testing.assert_close(beta32.double(), sde.beta(t32.double()), rtol=2e-7, atol=1e-7)
    inv = sde.beta_integral_inverse(b32)
    assert inv.dtype == torch.float32
    torch.testing.assert_close(sde.beta_integral(inv), b32, rtol=4e-7, atol=1e-6)
    torch.testing.assert_close(sde.alpha(sch.times.float()) ** 2, sch.alphas_cumprod.float(),
                               rtol=2e-6, atol=0)
    again = sd.sde_from_config(sde.config())
    assert isinstance(again, sd.ScheduleVPSDE)
    assert torch.equal(again.beta_integral(DENSE), sde.beta_integral(DENSE))


def test_likelihood_converges_on_the_exact_oracle():
    """Issue 17: with the piecewise-linear B, the error stalled near 2e-3 nats from rtol 1e-6
    on; now it falls with the tolerance at the smooth VP-SDE's cost."""
    gm = sd.analytic.GaussianMixture.eight_gaussians()
    x = gm.sample(8, gen(0), dtype=F64)
    t_eps = 1e-5

    def solve(sde, tol):
        res = sd.log_likelihood(gm.as_model(sde), x, rtol=tol, atol=tol, t_eps=t_eps)
        logp = res.logp - res.prior_logp + gm.marginal_log_prob(res.z, sde.T, sde)
        return float((logp - gm.marginal_log_prob(x, t_eps, sde)).abs().max()), res.nfe

    sde = sd.VPSDE.from_schedule(SCHEDULES["ddpm1000"])
    (e5, _), (e7, n7) = solve(sde, 1e-5), solve(sde, 1e-7)
    assert e7 < e5 / 10 and e7 < 1e-6, (e5, e7)
    _, smooth7 = solve(sd.VPSDE(), 1e-7)
    assert n7 <= 2 * smooth7, (n7, smooth7)


def test_adaptive_pf_ode_sampling_converges():
    gm = sd.analytic.GaussianMixture.eight_gaussians()
    x_T = torch.randn(8, 2, generator=gen(1), dtype=F64)

    def run(sde, tol):
        return sd.sample(gm.as_model(sde), solver="pf_ode", nfe=None, x_T=x_T, denoise=False,
                         rtol=tol, atol=tol)

    sde = sd.VPSDE.from_schedule(SCHEDULES["ddpm1000"])
    ref = run(sde, 1e-10).x
    res = [run(sde, tol) for tol in (1e-6, 1e-8)]
    errs = [float((r.x - ref).abs().max()) for r in res]
    assert errs[1] < errs[0] / 10 and errs[1] < 1e-6, errs
    assert res[1].nfe <= 2 * run(sd.VPSDE(), 1e-8).nfe, res[1].nfe
