"""PF-ODE log-likelihoods, encode/decode, bits/dim and the variational bound, against the
exact Gaussian-mixture oracle (float64 wherever precision is asserted)."""

import math

import pytest
import torch
from oracle import fit_slope, gen, make_sde, random_gm

import scoresde as sd
from scoresde.analytic import GaussianMixture

T_EPS = 1e-5


def _setup(sde_name="vp", dim=2, k=3, seed=0, n=48):
    sde = make_sde(sde_name)
    gm = random_gm(dim=dim, k=k, seed=seed)
    x = gm.sample(n, gen(seed + 100), dtype=torch.float64)
    return sde, gm, gm.as_model(sde), x


def _corrected(res, gm, sde):
    """logp with the prior replaced by the exact log p_T(z): isolates the integration."""
    return res.logp - res.prior_logp + gm.marginal_log_prob(res.z, sde.T, sde)


# ----------------------------------------------------------------------------- exact divergence


@pytest.mark.parametrize("sde_name,dim", [("vp", 2), ("subvp", 2), ("ve", 2), ("vp_cosine", 2),
                                          ("vp", 5), ("subvp", 5)])
def test_exact_logp_matches_oracle(sde_name, dim):
    sde, gm, model, x = _setup(sde_name, dim, seed=dim)
    res = sd.log_likelihood(model, x, divergence="exact", rtol=1e-5, atol=1e-5, t_eps=T_EPS)
    exact = gm.marginal_log_prob(x, T_EPS, sde)
    err = (_corrected(res, gm, sde) - exact).abs().max().item() / dim
    assert err < 1e-3, err
    # the bookkeeping of the result
    assert res.logp.shape == res.prior_logp.shape == res.delta_logp.shape == (x.shape[0],)
    assert res.z.shape == x.shape and res.logp.dtype == torch.float64
    torch.testing.assert_close(res.logp, res.prior_logp + res.delta_logp)
    torch.testing.assert_close(res.prior_logp, sde.prior_logp(res.z))
    assert res.stderr is None and res.t_eps == T_EPS
    # one network forward per right-hand side, D vector-Jacobian products each
    assert res.nfe > 10 and res.n_vjp == dim * res.nfe


def test_tighter_tolerance_converges():
    sde, gm, model, x = _setup("vp", 3, seed=3, n=32)
    exact = gm.marginal_log_prob(x, T_EPS, sde)
    errs, nfes = [], []
    for tol in (1e-4, 1e-6, 1e-8):
        res = sd.log_likelihood(model, x, rtol=tol, atol=tol, t_eps=T_EPS)
        errs.append((_corrected(res, gm, sde) - exact).abs().max().item())
        nfes.append(res.nfe)
    assert errs[2] < errs[1] < errs[0] and errs[2] < 1e-6, errs
    assert nfes[0] < nfes[1] < nfes[2]


def test_image_shaped_data_and_float32():
    sde = sd.VPSDE()
    base = random_gm(dim=4, k=2, seed=11)
    gm = GaussianMixture(base.weights, base.means, base.covs, event_shape=(1, 2, 2))
    model = gm.as_model(sde)
    x = gm.sample(24, gen(1), dtype=torch.float64)
    r64 = sd.log_likelihood(model, x)
    r32 = sd.log_likelihood(model, x.float())
    assert r32.logp.dtype == torch.float32 and r32.z.shape == x.shape
    exact = gm.marginal_log_prob(x, T_EPS, sde)
    assert (_corrected(r64, gm, sde) - exact).abs().max() / 4 < 1e-3
    assert (r32.logp.double() - r64.logp).abs().max() / 4 < 1e-2


def test_batches_match_one_solve():
    sde, gm, model, x = _setup("vp", 2, seed=5, n=40)
    whole = sd.log_likelihood(model, x)
    parts = sd.log_likelihood(model, x, batch_size=16, progress=True)
    assert parts.logp.shape == (40,)
    assert (parts.logp - whole.logp).abs().max() / 2 < 1e-3
    assert (parts.z - whole.z).abs().max() < 1e-3
    assert parts.nfe > whole.nfe  # three solves, each counted


# ----------------------------------------------------------------------------- Hutchinson


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_with_calibrated_stderr(probe):
    sde, gm, model, x = _setup("vp", 3, seed=2, n=96)
    exact = sd.log_likelihood(model, x)
    res = sd.log_likelihood(model, x, divergence="hutchinson", n_probes=16, probe=probe,
                            generator=gen(7))
    assert res.stderr.shape == (96,) and res.n_vjp == 16 * res.nfe
    err = res.logp - exact.logp
    se_batch = err.std().item() / math.sqrt(err.numel())
    assert abs(err.mean().item()) < 3 * se_batch, (err.mean().item(), se_batch)
    # the reported per-sample standard errors describe the actual errors
    z = err / res.stderr
    assert 0.6 < z.pow(2).mean().sqrt().item() < 1.5
    assert err.abs().max() > 1e-3  # it is an estimate, not the exact value


def test_hutchinson_stderr_shrinks_like_inverse_sqrt_probes():
    sde, gm, model, x = _setup("vp", 2, seed=4, n=64)
    probes = [4, 16, 64]
    rms = []
    for p in probes:
        res = sd.log_likelihood(model, x, divergence="hutchinson", n_probes=p, generator=gen(p),
                                rtol=1e-4, atol=1e-4)
        rms.append(res.stderr.pow(2).mean().sqrt().item())
    assert abs(fit_slope(probes, rms) + 0.5) < 0.1, rms


def test_hutchinson_is_reproducible_through_the_generator():
    sde, gm, model, x = _setup("vp", 2, seed=6, n=16)
    kw = {"divergence": "hutchinson", "n_probes": 2}
    a = sd.log_likelihood(model, x, generator=gen(3), **kw)
    b = sd.log_likelihood(model, x, generator=gen(3), **kw)
    c = sd.log_likelihood(model, x, generator=gen(4), **kw)
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=0)
    assert not torch.allclose(a.logp, c.logp)
    single = sd.log_likelihood(model, x, divergence="hutchinson", generator=gen(3))
    assert torch.isnan(single.stderr).all()  # one probe: no spread to measure


# ----------------------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_round_trip_within_tolerance(sde_name):
    sde, gm, model, x = _setup(sde_name, 5, seed=8, n=32)
    enc = sd.pf_ode_encode(model, x)
    dec = sd.pf_ode_decode(model, enc.z)
    assert enc.z.shape == x.shape and enc.nfe > 0 and dec.nfe > 0 and dec.t_eps == T_EPS
    scale = x.abs().max().item()
    assert (dec.x - x).abs().max().item() < 1e-4 * max(scale, 1.0)
    # the likelihood integrates the same map
    lik = sd.log_likelihood(model, x)
    zscale = enc.z.abs().max().item()
    assert (lik.z - enc.z).abs().max().item() < 1e-4 * max(zscale, 1.0)
    # and decoding exact prior-like latents lands on the data distribution's support:
    # encode then decode of a latent is the identity too
    z = sde.prior_sample((16, 5), gen(9), dtype=torch.float64)
    back = sd.pf_ode_encode(model, sd.pf_ode_decode(model, z).x).z
    assert (back - z).abs().max().item() < 1e-4 * sde.prior_std * 5


def test_encode_is_exact_for_a_gaussian():
    """For N(m, c^2 I) data under VP the PF-ODE map is affine per coordinate in closed form:
    x_t = alpha m + sqrt(alpha^2 c^2 + sigma^2) (x - m)/c."""
    sde = sd.VPSDE()
    m, c = 0.7, 0.4
    gm = GaussianMixture(torch.ones(1), torch.full((1, 3), m), c ** 2 * torch.eye(3)[None])
    model = gm.as_model(sde)
    x0 = gm.sample(20, gen(2), dtype=torch.float64)
    t = torch.tensor([T_EPS, 1.0], dtype=torch.float64)
    a, s = sde.alpha(t), sde.sigma(t)
    sd_t = torch.sqrt(a ** 2 * c ** 2 + s ** 2)
    x = a[0] * m + sd_t[0] * (x0 - m) / c
    z_exact = a[1] * m + sd_t[1] * (x - a[0] * m) / sd_t[0]
    enc = sd.pf_ode_encode(model, x, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(enc.z, z_exact, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- bits per dim


def test_bits_per_dim_offsets_on_uniform_densities():
    """A uniform density on the scaled cube gives P(k) = 2^-n per dimension: n bits/dim."""
    b, shape = 5, (5, 3, 4, 4)
    d = 48
    zeros = torch.zeros(b, dtype=torch.float64)
    for n_bits in (8, 5):
        # uniform on [0,1]^D: log p = 0; uniform on [-1,1]^D: log p = -D log 2
        torch.testing.assert_close(sd.bits_per_dim(zeros, shape, scaling="[0,1]", n_bits=n_bits),
                                   torch.full((b,), float(n_bits), dtype=torch.float64))
        torch.testing.assert_close(
            sd.bits_per_dim(zeros - d * math.log(2), shape, scaling="[-1,1]", n_bits=n_bits),
            torch.full((b,), float(n_bits), dtype=torch.float64))
    logp = torch.tensor([-10.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(sd.bits_per_dim(logp, (2, 7)), -logp / (7 * math.log(2)))


def test_bits_per_dim_scalings_agree_exactly_on_the_same_data():
    gm01 = random_gm(dim=3, k=2, seed=12, spread=0.15, min_std=0.08, max_std=0.15)
    gm01 = GaussianMixture(gm01.weights, gm01.means + 0.5, gm01.covs)
    gm11 = GaussianMixture(gm01.weights, 2 * gm01.means - 1, 4 * gm01.covs)
    k = (gm01.sample(64, gen(1), dtype=torch.float64) * 256).floor().clamp(0, 255).long()
    y01 = sd.uniform_dequantize(k, scaling="[0,1]", generator=gen(5), dtype=torch.float64)
    y11 = sd.uniform_dequantize(k, scaling="[-1,1]", generator=gen(5), dtype=torch.float64)
    torch.testing.assert_close(y11, 2 * y01 - 1, rtol=0, atol=1e-15)
    assert torch.equal((y01 * 256).floor().long(), k)
    b01 = sd.bits_per_dim(gm01.log_prob(y01), y01.shape, scaling="[0,1]")
    b11 = sd.bits_per_dim(gm11.log_prob(y11), y11.shape, scaling="[-1,1]")
    torch.testing.assert_close(b01, b11, rtol=1e-12, atol=1e-12)


def test_dequantized_bits_per_dim_through_the_ode():
    # beta_max = 40 makes the prior mismatch negligible (alpha(1)^2 = 2e-9): with the default
    # 20, data centred at 0.5 have log p_T(z) - log pi(z) ~ 1e-2 nats, a real difference
    # between the two scalings' models that is not what this test is about
    sde = sd.VPSDE(beta_max=40.0)
    base = random_gm(dim=2, k=2, seed=13, spread=0.1, min_std=0.08, max_std=0.12)
    gm01 = GaussianMixture(base.weights, base.means + 0.5, base.covs)
    gm11 = GaussianMixture(base.weights, 2 * gm01.means - 1, 4 * gm01.covs)
    k = (gm01.sample(24, gen(2), dtype=torch.float64) * 256).floor().clamp(0, 255).long()
    kw = {"n_draws": 3, "dtype": torch.float64}
    r01 = sd.dequantized_bits_per_dim(gm01.as_model(sde), k, scaling="[0,1]", generator=gen(8), **kw)
    r11 = sd.dequantized_bits_per_dim(gm11.as_model(sde), k, scaling="[-1,1]", generator=gen(8), **kw)
    assert r01.bpd.shape == (24,) and r01.stderr.shape == (24,) and r01.nfe > 0
    assert (r01.bpd - r11.bpd).abs().max() < 5e-4
    # and they agree with the exact density of the dequantized points (averaged over draws)
    y = sd.uniform_dequantize(k.unsqueeze(0).expand(3, 24, 2).reshape(72, 2), generator=gen(8),
                              dtype=torch.float64)
    exact = sd.bits_per_dim(gm01.log_prob(y), y.shape, scaling="[0,1]").reshape(3, 24).mean(0)
    assert (r01.bpd - exact).abs().max() < 5e-4
    # a discrete distribution has at most n bits of entropy per dimension, and this one is
    # concentrated: well under 8 bits, and positive
    assert 0 < r01.bpd.mean() < 8


# ----------------------------------------------------------------------------- variational bound


@pytest.mark.parametrize("sde_name,dim", [("vp", 2), ("subvp", 2), ("vp", 4), ("subvp", 4),
                                          ("ve", 2), ("vp_cosine", 3)])
def test_variational_bound_is_a_bound_and_tight_for_the_exact_score(sde_name, dim):
    sde, gm, model, x = _setup(sde_name, dim, seed=20 + dim, n=32)
    vb = sd.variational_bound(model, x, n_samples=2048, generator=gen(3), t_eps=T_EPS)
    assert vb.bound.shape == vb.stderr.shape == (32,) and vb.nfe == 1
    exact = gm.marginal_log_prob(x, T_EPS, sde)
    gap = (exact - vb.bound).mean().item()
    se = vb.stderr.pow(2).sum().sqrt().item() / x.shape[0]
    # a lower bound, up to Monte Carlo error ...
    assert gap > -3 * se, (gap, se)
    # ... and with the exact score, tight up to the prior mismatch (not loose by nats/dim)
    assert gap / dim < 0.02 + 3 * se / dim, (gap, se)


def test_variational_bound_sees_a_wrong_score():
    """A score from the wrong data distribution: the exact ODE density of that model differs,
    but the bound (on the SDE model's density) must fall well below the true log p."""
    sde, gm, _, x = _setup("vp", 2, seed=30, n=32)
    other = GaussianMixture(gm.weights, gm.means + 1.0, gm.covs)
    vb = sd.variational_bound(other.as_model(sde), x, n_samples=512, generator=gen(1))
    gap = (gm.marginal_log_prob(x, T_EPS, sde) - vb.bound).mean().item()
    assert gap > 1.0, gap


def test_variational_bound_uniform_time_has_the_same_expectation_for_ve():
    sde, gm, model, x = _setup("ve", 2, seed=31, n=16)
    a = sd.variational_bound(model, x, n_samples=4096, generator=gen(1))
    b = sd.variational_bound(model, x, n_samples=4096, generator=gen(2), importance_sampling=False)
    se = math.sqrt(a.stderr.pow(2).sum().item() + b.stderr.pow(2).sum().item()) / 16
    assert abs((a.bound - b.bound).mean().item()) < 4 * se


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    sde, gm, model, x = _setup("vp", 2, n=4)
    with pytest.raises(ValueError, match="event_shape"):
        sd.log_likelihood(model, x[:, 0])
    with pytest.raises(ValueError, match="shape"):
        sd.log_likelihood(model, torch.zeros(4, 3, dtype=torch.float64))  # the oracle is 2-D
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sd.log_likelihood(model, bad)
    with pytest.raises(TypeError, match="floating"):
        sd.log_likelihood(model, x.long())
    with pytest.raises(TypeError, match="Tensor"):
        sd.log_likelihood(model, x.tolist())
    with pytest.raises(TypeError, match="ScoreModel"):
        sd.log_likelihood(lambda x, t: x, x)
    with pytest.raises(ValueError, match=r"'approx'.*'exact', 'hutchinson'|'exact', 'hutchinson'.*'approx'"):
        sd.log_likelihood(model, x, divergence="approx")
    with pytest.raises(ValueError, match="'normal'"):
        sd.log_likelihood(model, x, divergence="hutchinson", probe="normal")
    for kw in ({"rtol": 0.0}, {"atol": -1e-5}):
        with pytest.raises(ValueError, match="positive"):
            sd.log_likelihood(model, x, **kw)
    with pytest.raises(ValueError, match="n_probes"):
        sd.log_likelihood(model, x, divergence="hutchinson", n_probes=0)
    with pytest.raises(TypeError, match="n_probes"):
        sd.log_likelihood(model, x, divergence="hutchinson", n_probes=2.0)
    with pytest.raises(ValueError, match="t_eps"):
        sd.log_likelihood(model, x, t_eps=1.0)
    with pytest.raises(ValueError, match="adaptive"):
        sd.log_likelihood(model, x, method="euler")
    with pytest.raises(TypeError, match="generator"):
        sd.log_likelihood(model, x, generator=0)
    with pytest.raises(ValueError, match="batch_size"):
        sd.log_likelihood(model, x, batch_size=0)
    with pytest.raises(ValueError, match="NaN"):
        sd.pf_ode_decode(model, bad)
    with pytest.raises(ValueError, match="n_samples"):
        sd.variational_bound(model, x, n_samples=0)
    with pytest.raises(ValueError, match="sigma"):
        sd.variational_bound(model, x, t_eps=0.0)


def test_bad_bits_per_dim_inputs():
    logp = torch.zeros(4)
    with pytest.raises(ValueError, match="scaling"):
        sd.bits_per_dim(logp, (4, 3), scaling="[0,255]")
    with pytest.raises(ValueError, match="x_shape"):
        sd.bits_per_dim(logp, (3, 4))
    with pytest.raises(ValueError, match="x_shape"):
        sd.bits_per_dim(logp, (4,))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        sd.bits_per_dim(logp[None], (1, 4))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        sd.uniform_dequantize(torch.tensor([[0, 256]]))
    with pytest.raises(ValueError, match="integer"):
        sd.uniform_dequantize(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="scaling"):
        sd.uniform_dequantize(torch.tensor([[1, 2]]), scaling="continuous")


def test_step_limit_reports_the_time_reached():
    sde, gm, model, x = _setup("vp", 2, n=8)
    with pytest.raises(RuntimeError, match=r"max_num_steps=3 and stopped at t="):
        sd.log_likelihood(model, x, max_num_steps=3)
    with pytest.raises(RuntimeError, match=r"stopped at t="):
        sd.pf_ode_decode(model, x, max_num_steps=2)


def test_non_differentiable_score_is_an_error():
    sde, gm, _, x = _setup("vp", 2, n=4)
    model = sd.ScoreModel.from_score_fn(lambda y, t: gm.score(y.detach(), t, sde), sde)
    with pytest.raises(RuntimeError, match="differentiabl"):
        sd.log_likelihood(model, x)
    # encoding needs no derivative
    assert sd.pf_ode_encode(model, x).z.shape == x.shape


def test_works_under_no_grad_and_inference_mode():
    sde, gm, model, x = _setup("vp", 2, n=8)
    ref = sd.log_likelihood(model, x)
    with torch.no_grad():
        a = sd.log_likelihood(model, x)
    with torch.inference_mode():
        b = sd.log_likelihood(model, x.clone(), divergence="hutchinson", n_probes=2, generator=gen(0))
        c = sd.log_likelihood(model, x.clone())
    torch.testing.assert_close(a.logp, ref.logp)
    torch.testing.assert_close(c.logp, ref.logp)
    assert torch.isfinite(b.logp).all()


# ----------------------------------------------------------------------------- levels, dtypes, logdet


def test_bits_per_dim_with_any_number_of_levels():
    """A uniform density on the scaled cube gives P(k) = 1/L per dimension: log2(L) bits/dim,
    for L = 17 (scikit-learn's digits) as for powers of two; n_bits is levels = 2**n_bits."""
    b, shape, d = 3, (3, 8, 8), 64
    zeros = torch.zeros(b, dtype=torch.float64)
    for levels in (17, 2, 256):
        want = torch.full((b,), math.log2(levels), dtype=torch.float64)
        torch.testing.assert_close(sd.bits_per_dim(zeros, shape, scaling="[0,1]", levels=levels), want)
        torch.testing.assert_close(   # uniform on [-1,1]^D: log p = -D log 2; offset log2(L/2)
            sd.bits_per_dim(zeros - d * math.log(2), shape, scaling="[-1,1]", levels=levels), want)
    torch.testing.assert_close(sd.bits_per_dim(zeros, shape, scaling="[0,1]", n_bits=5),
                               sd.bits_per_dim(zeros, shape, scaling="[0,1]", levels=32))
    k = torch.arange(17).reshape(1, 17)
    y = sd.uniform_dequantize(k, levels=17, generator=gen(0), dtype=torch.float64)
    assert torch.equal((y * 17).floor().long(), k) and y.max() < 1
    y11 = sd.uniform_dequantize(k, levels=17, scaling="[-1,1]", generator=gen(0), dtype=torch.float64)
    torch.testing.assert_close(y11, 2 * y - 1, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        sd.uniform_dequantize(torch.tensor([[0, 17]]), levels=17)
    with pytest.raises(ValueError, match="disagree"):
        sd.bits_per_dim(zeros, shape, scaling="[0,1]", n_bits=4, levels=17)
    with pytest.raises(ValueError, match="levels"):
        sd.uniform_dequantize(k[:, :1], levels=1)
    with pytest.raises(TypeError, match="levels"):
        sd.bits_per_dim(zeros, shape, scaling="[0,1]", levels=17.0)


def test_dequantize_dtype_follows_the_input():
    k = torch.tensor([[0, 3, 255]])
    assert sd.uniform_dequantize(k.double()).dtype == torch.float64
    assert sd.uniform_dequantize(k.float()).dtype == torch.float32
    assert sd.uniform_dequantize(k).dtype == torch.get_default_dtype()
    assert sd.uniform_dequantize(k.double(), dtype=torch.float32).dtype == torch.float32
    with pytest.raises(TypeError, match="dtype"):
        sd.uniform_dequantize(k, dtype=torch.int64)


def test_dequantized_bits_per_dim_runs_in_the_models_dtype():
    """A float64 network and integer data: dequantized in float64 (a float32 default used to
    reach the network and fail with a raw matmul dtype error); a conflicting dtype is named."""
    net = sd.nets.MLPScoreNet(dim=2, hidden=8, depth=1, generator=gen(0)).double()
    model = sd.ScoreModel(net, sd.VPSDE())
    k = torch.randint(0, 17, (4, 2), generator=gen(1))
    res = sd.dequantized_bits_per_dim(model, k, levels=17, generator=gen(2), rtol=1e-3, atol=1e-3)
    assert res.bpd.dtype == torch.float64 and torch.isfinite(res.bpd).all()
    with pytest.raises(TypeError, match="differs from the model"):
        sd.dequantized_bits_per_dim(model, k, levels=17, dtype=torch.float32)


def test_logdet_of_a_data_transform_is_added():
    """x = (u - m)/s standardises data u: log p_U(u) = log p_X(x) - D log s, exactly."""
    sde, gm, model, x = _setup("vp", 2, seed=40, n=8)
    s = 2.5
    base = sd.log_likelihood(model, x, rtol=1e-3, atol=1e-3)
    for logdet in (-2 * math.log(s), torch.full((8,), -2 * math.log(s), dtype=torch.float64),
                   lambda y: torch.full((y.shape[0],), -2 * math.log(s), dtype=y.dtype)):
        res = sd.log_likelihood(model, x, rtol=1e-3, atol=1e-3, logdet=logdet)
        torch.testing.assert_close(res.logp, base.logp - 2 * math.log(s))
        torch.testing.assert_close(res.logp, res.prior_logp + res.delta_logp + res.logdet)
    u = gm.sample(8, gen(41), dtype=torch.float64)  # the exact identity on the density itself
    gm_u = GaussianMixture(gm.weights, s * gm.means + 1.0, s ** 2 * gm.covs)
    torch.testing.assert_close(gm_u.log_prob(s * u + 1.0), gm.log_prob(u) - 2 * math.log(s))
    assert base.logdet is None
    with pytest.raises(ValueError, match="logdet must have shape"):
        sd.log_likelihood(model, x, logdet=torch.zeros(3))
    with pytest.raises(TypeError, match="logdet"):
        sd.log_likelihood(model, x, logdet="0")
    with pytest.raises(ValueError, match="NaN"):
        sd.log_likelihood(model, x, logdet=float("nan"))


def test_cli_likelihood_prints_the_variational_bound(tmp_path, capsys):
    from scoresde import cli

    net = sd.nets.MLPScoreNet(dim=2, hidden=16, depth=1, generator=gen(0))
    trainer = sd.Trainer(sd.ScoreModel(net, sd.VPSDE()), progress=False,
                         meta={"data": "eight_gaussians"})
    trainer.save(tmp_path / "t" / "model.pt")  # an untrained network will do
    code = cli.main(["likelihood", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--num-samples", "16",
                     "--rtol", "1e-3", "--atol", "1e-3", "--bound", "32", "--variable", "edm",
                     "--out", str(tmp_path / "l"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "variational bound" in out and "variable edm" in out
    import json

    vals = json.loads((tmp_path / "l" / "likelihood.json").read_text())
    assert vals["bound_nfe"] == 1 and math.isfinite(vals["bound_nll"])
    assert cli.main(["likelihood", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--num-samples", "4",
                     "--norm", "max", "--out", str(tmp_path / "l2"), "--no-progress"]) == 2
