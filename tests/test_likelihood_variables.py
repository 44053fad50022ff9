"""The PF-ODE likelihood in other integration variables (sigma/alpha, the log-SNR, EDM's
x/alpha against sigma/alpha) and with other error norms, against the exact Gaussian-mixture
oracle; the numerical-failure errors; a CUDA path without host synchronisation."""

import math
import re

import pytest
import torch
from oracle import gen, make_sde, random_gm

import scoresde as sd
from scoresde.dynamics import (
    FLOW_VARIABLES,
    FlowVariable,
    ProbabilityFlow,
    ProbabilityFlowWithDivergence,
)

T_EPS = 1e-5
SDE_NAMES = ["vp", "subvp", "ve", "vp_cosine"]
F64 = torch.float64


def _setup(sde_name, dim=2, n=24, seed=0):
    sde = make_sde(sde_name)
    gm = random_gm(dim=dim, k=3, seed=seed)
    x = gm.sample(n, gen(seed + 100), dtype=F64)
    return sde, gm, gm.as_model(sde), x


def _err(res, gm, sde, x):
    """Worst sample's |log p - exact log p_t_eps| per dimension, with the exact log p_T(z) in
    place of the prior (the integration error alone)."""
    corr = (res.logp - res.prior_logp).double() + gm.marginal_log_prob(res.z.double(), sde.T, sde)
    return ((corr - gm.marginal_log_prob(x, T_EPS, sde)).abs().max() / x.shape[1]).item()


# ----------------------------------------------------------------------------- the transformed field


@pytest.mark.parametrize("sde_name", SDE_NAMES)
@pytest.mark.parametrize("name", [v for v in FLOW_VARIABLES if v != "t"])
def test_transformed_field_is_the_t_field_times_dt_dv(sde_name, name):
    """Against autograd's dt/dv of the map v -> t: the field in v is w h (state x) or
    w (h - f x) / alpha (state x/alpha), and the divergence row is w times the one in t,
    probe by probe."""
    sde, gm, model, x = _setup(sde_name, n=6)
    var = FlowVariable(sde, name, (T_EPS, sde.T))
    probes = torch.randn((3,) + tuple(x.shape), generator=gen(1), dtype=F64)
    for t0 in (1e-3, 0.05, 0.4, 0.97):
        v = torch.tensor(var.value(t0), dtype=F64, requires_grad=True)
        t = var.time(v)
        (w,) = torch.autograd.grad(t, v)
        t = t.detach()
        assert abs(float(t) - t0) < 1e-10 * max(1.0, t0 * 1e4)
        c = sde.coefficients(t)
        y = x / c.alpha if var.scaled else x
        h, q = ProbabilityFlowWithDivergence(model, x, probes)(t, (x, None))
        hv, qv = ProbabilityFlowWithDivergence(model, x, probes, variable=var)(v.detach(), (y, None))
        want = w * (h - c.f * x) / c.alpha if var.scaled else w * h
        torch.testing.assert_close(hv, want, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(qv, w * q, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ProbabilityFlow(model, variable=var)(v.detach(), y), hv,
                                   rtol=1e-12, atol=1e-14)


def test_edm_variable_is_eps_hat_exactly():
    """dy/d(sigma/alpha) = eps_hat(alpha y, t) for y = x/alpha (EDM's ODE, DDIM's variable)."""
    for sde_name in ("vp", "subvp"):
        sde, gm, model, x = _setup(sde_name, n=5)
        var = FlowVariable(sde, "edm", (T_EPS, sde.T))
        for t0 in (0.01, 0.5):
            v = torch.tensor(var.value(t0), dtype=F64)
            t = var.time(v)
            a = sde.alpha(t)
            torch.testing.assert_close(ProbabilityFlow(model, variable=var)(v, x / a),
                                       model.eps(x, t), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("sde_name", SDE_NAMES)
@pytest.mark.parametrize("variable", FLOW_VARIABLES)
def test_every_variable_meets_the_oracle(sde_name, variable):
    sde, gm, model, x = _setup(sde_name, n=8, seed=2)
    res = sd.log_likelihood(model, x, variable=variable, rtol=1e-6, atol=1e-6, t_eps=T_EPS)
    assert _err(res, gm, sde, x) < 1e-4
    assert res.z.shape == x.shape and res.n_vjp == 2 * res.nfe
    torch.testing.assert_close(res.prior_logp, sde.prior_logp(res.z))


@pytest.mark.parametrize("norm,tol", [("per_sample", 1e-6), ("rms", 1e-7), ("logp", 1e-6)])
@pytest.mark.parametrize("variable", ["t", "edm"])
def test_every_norm_meets_the_oracle(norm, tol, variable):
    sde, gm, model, x = _setup("vp", dim=3, n=16, seed=3)
    res = sd.log_likelihood(model, x, variable=variable, norm=norm, rtol=tol, atol=tol)
    assert _err(res, gm, sde, x) < 1e-4


def test_logp_norm_tolerance_reads_in_nats():
    """The goal-oriented norm converges like a tolerance on log p: tighter tolerance, smaller
    error, and the error stays within a modest multiple of atol (global vs local error)."""
    sde, gm, model, x = _setup("vp", dim=2, n=16, seed=4)
    errs = []
    for tol in (1e-3, 1e-5, 1e-7):
        res = sd.log_likelihood(model, x, norm="logp", rtol=tol, atol=tol)
        errs.append(_err(res, gm, sde, x) * 2)  # nats, not per dimension
    assert errs[2] < errs[1] < errs[0], errs
    assert errs[1] < 100 * 1e-5 and errs[2] < 1e-5, errs


@pytest.mark.parametrize("sde_name", ["vp"])
def test_change_of_variables_gives_the_same_likelihood(sde_name):
    """Every variable integrates the same quantity: the log-likelihoods, Hutchinson probe by
    probe, and the latents agree with the t-integration to the ODE tolerance (1e-7 here;
    measured differences up to 6e-7)."""
    sde, gm, model, x = _setup(sde_name, n=3, seed=5)
    kw = {"divergence": "hutchinson", "n_probes": 2, "rtol": 1e-7, "atol": 1e-7}
    ref = sd.log_likelihood(model, x, generator=gen(7), **kw)
    for variable in FLOW_VARIABLES[1:]:
        res = sd.log_likelihood(model, x, variable=variable, generator=gen(7), **kw)
        torch.testing.assert_close(res.delta_logp, ref.delta_logp, rtol=0, atol=5e-6)
        torch.testing.assert_close(res.stderr, ref.stderr, rtol=0, atol=5e-6)
        torch.testing.assert_close(res.z, ref.z, rtol=0, atol=5e-6)


@pytest.mark.parametrize("variable", FLOW_VARIABLES)
def test_encode_decode_round_trip_in_every_variable(variable):
    for sde_name in ("vp", "ve"):
        sde, gm, model, x = _setup(sde_name, dim=3, n=6, seed=6)
        enc = sd.pf_ode_encode(model, x, variable=variable)
        dec = sd.pf_ode_decode(model, enc.z, variable=variable)
        assert (dec.x - x).abs().max().item() < 1e-4 * max(x.abs().max().item(), 1.0)


@pytest.mark.parametrize("variable", FLOW_VARIABLES)
def test_dtype_follows_the_input_in_every_variable(variable):
    sde, gm, model, x = _setup("vp", n=8, seed=7)
    x32 = x.float()
    res = sd.log_likelihood(model, x32, variable=variable, rtol=1e-4, atol=1e-4)
    assert res.logp.dtype == res.z.dtype == res.delta_logp.dtype == torch.float32
    assert _err(res, gm, sde, x) < 1e-3  # float32 arithmetic, tolerance 1e-4
    out = sd.pf_ode_decode(model, res.z, variable=variable, rtol=1e-4, atol=1e-4)
    assert out.x.dtype == torch.float32
    assert (out.x.double() - x).abs().max() < 1e-3 * x.abs().max()  # two solves at 1e-4


def test_cosine_breakpoint_is_mapped_to_the_variable():
    sde = sd.VPSDE.cosine()
    for name in ("sigma", "log_snr"):
        var = FlowVariable(sde, name, (T_EPS, sde.T))
        (b,) = var.breakpoints()
        assert abs(var.time_of_value(b) - sde.t_clip) < 1e-9


# ----------------------------------------------------------------------------- errors


def test_variable_and_norm_errors():
    sde, gm, model, x = _setup("vp", n=4)
    with pytest.raises(ValueError, match="variable must be one of"):
        sd.log_likelihood(model, x, variable="lambda")
    with pytest.raises(TypeError, match="variable"):
        sd.log_likelihood(model, x, variable=1)
    with pytest.raises(ValueError, match="norm must be one of"):
        sd.log_likelihood(model, x, norm="max")
    with pytest.raises(ValueError, match="norm must be one of"):
        sd.pf_ode_encode(model, x, norm="logp")  # no log-density to control
    for name in ("sigma", "log_snr", "edm"):
        with pytest.raises(ValueError, match=r"sigma\(t\) > 0.*t_eps > 0"):
            sd.log_likelihood(model, x, variable=name, t_eps=0.0)
    # by default: sigma/alpha where the SDE allows it, else t (here sigma(0) = 0)
    assert sd.log_likelihood(model, x, rtol=1e-3, atol=1e-3).variable == sd.likelihood.DEFAULT_VARIABLE
    res = sd.log_likelihood(model, x, t_eps=0.0, rtol=1e-3, atol=1e-3)
    assert res.variable == "t" and torch.isfinite(res.logp).all()
    enc = sd.pf_ode_encode(model, x, rtol=1e-3, atol=1e-3)
    assert enc.variable == sd.likelihood.DEFAULT_FLOW_VARIABLE
    assert sd.pf_ode_decode(model, enc.z, t_eps=0.0, rtol=1e-3, atol=1e-3).variable == "t"


class _NoInverse(sd.SDE):
    """A VP-like SDE without a closed-form inverse log-SNR."""

    def __init__(self):
        self.vp = sd.VPSDE()

    def _f(self, t):
        return self.vp.coefficients(t).f

    def _g2(self, t):
        return self.vp.coefficients(t).g2

    def _log_alpha(self, t):
        return torch.log(self.vp.coefficients(t).alpha)

    def _sigma(self, t):
        return self.vp.coefficients(t).sigma

    def config(self):
        return {"name": "_NoInverse"}


def test_sde_without_inverse_log_snr_needs_t():
    sde = _NoInverse()
    gm = random_gm(dim=2, k=2, seed=1)
    model = gm.as_model(sde)
    x = gm.sample(4, gen(0), dtype=F64)
    with pytest.raises(ValueError, match=r"_NoInverse does not have; use variable='t'"):
        sd.log_likelihood(model, x, variable="log_snr")
    res = sd.log_likelihood(model, x, rtol=1e-3, atol=1e-3)  # the default falls back to t
    assert res.variable == "t" and torch.isfinite(res.logp).all()


def _nan_below(t_bad, sde):
    def fn(x, t):
        return torch.where(t[:, None] < t_bad, torch.full_like(x, float("nan")), -x)
    return sd.ScoreModel.from_score_fn(fn, sde)


@pytest.mark.parametrize("variable", ["t", "log_snr"])
def test_nan_score_is_a_sampling_error_naming_the_time(variable):
    sde = sd.VPSDE()
    x = torch.randn(6, 2, generator=gen(0), dtype=F64)
    model = _nan_below(0.5, sde)
    # decoding runs from T towards t_eps and meets the NaN below t = 0.5
    with pytest.raises(sd.SamplingError, match="NaN/Inf") as info:
        sd.pf_ode_decode(model, x, variable=variable)
    t_bad = float(re.search(r"first non-finite evaluation at t = ([\d.e+-]+)", str(info.value))[1])
    assert 1e-3 < t_bad < 0.5  # a time t, also when integrating in the log-SNR
    # the likelihood starts in the NaN region: its first evaluation is already NaN (before
    # the fix, the NaN first step reached the model as the time 'nan')
    with pytest.raises(sd.SamplingError, match=r"could not get past t = 1e-05"):
        sd.log_likelihood(model, x, variable=variable)


def test_exploding_score_is_a_sampling_error_naming_the_time():
    sde = sd.VPSDE()

    def fn(x, t):  # finite, but grows like exp(200 (0.3 - t)) below t = 0.3
        return -x * torch.exp(torch.clamp(200.0 * (0.3 - t[:, None]), max=700.0))

    model = sd.ScoreModel.from_score_fn(fn, sde)
    x = torch.randn(4, 2, generator=gen(1), dtype=F64)
    with pytest.raises(sd.SamplingError, match=r"could not get past t = [\d.e+-]+: the step size "
                                               r"underflowed.*underflow in dt"):
        sd.log_likelihood(model, x)


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variable", FLOW_VARIABLES)
def test_cuda_right_hand_side_has_no_host_sync_and_matches_cpu(variable):
    dev = torch.device("cuda")
    sde = sd.VPSDE()
    net = sd.nets.MLPScoreNet(dim=3, hidden=32, depth=2, generator=gen(0)).double()
    model = sd.ScoreModel(net, sde).to(dev)
    x = torch.randn(64, 3, generator=gen(1), dtype=F64).to(dev)
    var = FlowVariable(sde, variable, (T_EPS, sde.T))
    for probes in (None, torch.randn((2, 64, 3), dtype=F64, device=dev)):
        rhs = ProbabilityFlowWithDivergence(model, x, probes, variable=var)
        v = torch.tensor(var.value(0.3), dtype=F64, device=dev)
        rhs(v, (x, None))  # warm-up (lazy initialisation may synchronise)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            rhs(v, (x, None))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    gpu = sd.log_likelihood(model, x, variable=variable)
    cpu = sd.log_likelihood(model.cpu(), x.cpu(), variable=variable)
    assert gpu.logp.device.type == "cuda"
    assert (gpu.logp.cpu() - cpu.logp).abs().max().item() < 1e-4 * math.sqrt(3)
