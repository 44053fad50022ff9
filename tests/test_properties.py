"""Property-based tests (hypothesis) over the public API and the command line: for random
shapes, dtypes, NaN/Inf placement, budgets, times, tolerances and option values, every call
either raises a clear TypeError / ValueError (BudgetError is one) / SamplingError, or returns
a finite result of the right shape and dtype -- never another exception, a hang or NaN."""

from __future__ import annotations

import contextlib
import math
import os
import signal

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import scoresde as sd
from scoresde import cli

CLEAR = (TypeError, ValueError, sd.SamplingError)
#: examples per property in `make test`; a longer hunt: SCORESDE_HYPOTHESIS_EXAMPLES=1000
EXAMPLES = int(os.environ.get("SCORESDE_HYPOTHESIS_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@contextlib.contextmanager
def no_hang(seconds: float = 60.0):
    """Fail (instead of hanging the suite) if the body runs longer than `seconds`."""
    def boom(*_):
        raise TimeoutError(f"no result within {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def gaussian_model(sde: sd.SDE, s: float = 0.7) -> sd.ScoreModel:
    """The exact score of N(0, s^2 I) under `sde`, for any event shape."""
    def score(x, t):
        a, sig = sde.alpha(t), sde.sigma(t)
        var = (a ** 2 * s ** 2 + sig ** 2).reshape((-1,) + (1,) * (x.dim() - 1))
        return -x / var
    return sd.ScoreModel.from_score_fn(score, sde)


SDE_NAMES = ["vp", "subvp", "ve", "vp_cosine"]
weird_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-5, 5),
    st.sampled_from([0, 1e-12, 1e-300, -1e-3, "1e-3", None, True, [1e-3]]))
shapes = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(lambda ev: (2, *ev))


def mostly(valid, weird):
    """`valid` three times out of four, `weird` otherwise (so most examples get past the
    checks and exercise the numerics)."""
    return st.integers(0, 3).flatmap(lambda k: weird if k == 3 else valid)


def _poison(x: torch.Tensor, where: int | None, value: float) -> torch.Tensor:
    if where is not None and x.numel():
        x = x.clone()
        x.view(-1)[where % x.numel()] = value
    return x


def _check_result(res, shape, dtype):
    assert res.x.shape == tuple(shape) and res.x.dtype == dtype
    assert bool(torch.isfinite(res.x).all()), "NaN/Inf returned without an error"


@SETTINGS
@given(sde_name=st.sampled_from(SDE_NAMES), solver=st.sampled_from(sorted(sd.SOLVERS)),
       nfe=mostly(st.integers(2, 30), st.sampled_from([-3, 0, 1, None, 2.5, "10", True, 10 ** 9])),
       shape=shapes, dtype=st.sampled_from([torch.float32, torch.float64]),
       t_end=mostly(st.one_of(st.none(), st.floats(1e-7, 0.9)), weird_numbers),
       nan_at=mostly(st.none(), st.integers(0, 50)),
       bad=st.sampled_from([math.nan, math.inf, -math.inf]),
       grid=mostly(st.sampled_from([None, "uniform", "quadratic", "logsnr", "karras"]),
                   st.sampled_from(["nope", 3])))
def test_sample_fails_clearly_or_returns_finite(sde_name, solver, nfe, shape, dtype, t_end, nan_at,
                                                 bad, grid):
    sde = sd.get_sde(sde_name)
    model = gaussian_model(sde)
    x_T = _poison(sde.prior_sample(shape, torch.Generator().manual_seed(0), dtype=dtype), nan_at, bad)
    kw = {} if grid is None else {"grid": grid}
    if solver == "torchsde" and nfe is None:
        kw.update(rtol=1e-2, atol=1e-2)
    with no_hang():
        try:
            res = sd.sample(model, solver=solver, nfe=nfe, x_T=x_T, t_end=t_end,
                            generator=torch.Generator().manual_seed(1), **kw)
        except CLEAR as e:
            event(f"sample: {type(e).__name__}")
            return
    event("sample: finite result")
    _check_result(res, shape, dtype)
    if nfe is not None:
        assert res.nfe == nfe


@SETTINGS
@given(sde_name=st.sampled_from(SDE_NAMES), shape=shapes,
       dtype=st.sampled_from([torch.float32, torch.float64]),
       divergence=mostly(st.sampled_from(["exact", "hutchinson"]), st.sampled_from(["nope", None])),
       n_probes=mostly(st.integers(1, 3), st.sampled_from([-1, 0, 1.5])),
       tol=mostly(st.floats(1e-5, 1e-2), weird_numbers),
       t_eps=mostly(st.one_of(st.floats(1e-7, 0.9), st.just(0.0)), weird_numbers),
       nan_at=mostly(st.none(), st.integers(0, 50)),
       bad=st.sampled_from([math.nan, math.inf]))
def test_log_likelihood_fails_clearly_or_returns_finite(sde_name, shape, dtype, divergence, n_probes,
                                                         tol, t_eps, nan_at, bad):
    sde = sd.get_sde(sde_name)
    x = _poison(torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=dtype), nan_at, bad)
    with no_hang():
        try:
            res = sd.log_likelihood(gaussian_model(sde), x, divergence=divergence, n_probes=n_probes,
                                    rtol=tol, atol=tol, t_eps=t_eps, max_num_steps=2000,
                                    generator=torch.Generator().manual_seed(3))
        except CLEAR as e:
            event(f"likelihood: {type(e).__name__}")
            return
        except RuntimeError as e:      # the documented step-limit error, naming the time
            assert "max_num_steps" in str(e)
            return
    event("likelihood: finite result")
    assert res.logp.shape == (shape[0],) and res.logp.dtype == dtype
    assert bool(torch.isfinite(res.logp).all()) and res.z.shape == x.shape


@SETTINGS
@given(sde_name=st.sampled_from(SDE_NAMES + ["vp_schedule"]),
       t=st.one_of(weird_numbers, st.lists(st.one_of(st.floats(-0.5, 1.5), st.just(math.nan)),
                                            min_size=1, max_size=4).map(torch.tensor)),
       method=st.sampled_from(["alpha", "sigma", "log_snr", "diffusion", "marginal_prob", "drift"]))
def test_sde_methods_fail_clearly_or_return_finite(sde_name, t, method):
    sde = (sd.VPSDE.from_schedule(sd.VPSDE().discretize(50)) if sde_name == "vp_schedule"
           else sd.get_sde(sde_name))
    n = t.shape[0] if isinstance(t, torch.Tensor) and t.dim() == 1 else 3
    x = torch.ones(n, 2)
    try:
        if method in ("marginal_prob",):
            out = sde.marginal_prob(x, t)[0]
        elif method == "drift":
            out = sde.drift(x, t)
        else:
            out = getattr(sde, method)(t)
    except CLEAR:
        return
    # log-SNR is +inf at t = 0 for VP-type SDEs (sigma(0) = 0): the one documented infinity
    finite = torch.isfinite(out) | ((method == "log_snr") & (out == math.inf))
    assert bool(finite.all()), (method, t, out)


@SETTINGS
@given(n=st.integers(-1, 30), d=st.integers(0, 3), m=st.integers(0, 30),
       nan_at=st.one_of(st.none(), st.integers(0, 100)),
       metric=st.sampled_from(sorted(sd.metrics.METRICS)))
def test_metrics_fail_clearly_or_return_finite(n, d, m, nan_at, metric):
    g = torch.Generator().manual_seed(4)
    try:
        x = _poison(torch.randn(max(n, 0), d, generator=g, dtype=torch.float64), nan_at, math.nan)
        y = torch.randn(max(m, 0), d, generator=g, dtype=torch.float64)
        v = sd.metrics.METRICS[metric](x, y, 0)
    except CLEAR:
        return
    except RuntimeError:                 # torch refusing a negative size before we are called
        assert n < 0 or m < 0
        return
    assert math.isfinite(v)


argv_pieces = st.sampled_from([
    ["--nfe", "1"], ["--nfe", "4"], ["--nfe", "x"], ["--nfe", "-3"], ["--num-samples", "5"],
    ["--num-samples", "-1"], ["--num-samples", "40"], ["--solvers", "ddim"], ["--solvers", "warp"],
    ["--solvers", "ddim:eta=7"],
    ["--solvers", "pf_ode:adaptive=1,rtol=0"], ["--sde", "ve"], ["--sde", "nope"],
    ["--target", "mixture5d"], ["--target", "nope"], ["--t-end", "2"], ["--t-end", "0.01"],
    ["--floor-repeats", "1"], ["--floor-repeats", "2"], ["--seed", "3"], ["--import", "nope_mod"],
    ["--checkpoint", "missing.pt"]])


@settings(max_examples=max(15, EXAMPLES // 4), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(argv_pieces, min_size=0, max_size=5))
def test_cli_compare_exits_0_or_2_with_one_line(tmp_path_factory, capsys, pieces):
    out = tmp_path_factory.mktemp("cli") / "out"
    argv = ["compare", "--out", str(out), "--no-progress", "--num-samples", "30",
            "--floor-repeats", "2", "--solvers", "ddim", "euler_maruyama", "--nfe", "3", "6"]
    for p in pieces:
        argv += p
    with no_hang(120):
        try:
            code = cli.main(argv)
        except SystemExit as e:            # argparse: a malformed option, exit status 2
            code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 2 and "usage:" not in err:
        assert len(err.strip().splitlines()) == 1, err
