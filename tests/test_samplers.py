"""Samplers against the exact Gaussian-mixture oracle (zero model error).

- every registered solver's samples approach the exact distribution as its NFE grows;
- deterministic solvers converge with their declared order (slope of log error vs log NFE
  against a tight adaptive reference, float64, from one shared x_T);
- closed forms: DDIM(eta=0) is the exact PF-ODE map for a point mass and converges with
  order 1 to the Gaussian flow; DDIM(eta=1) is ancestral sampling draw for draw; DDPM's
  Algorithm 2 is `sample(solver="ancestral")` on the schedule's SDE, to round-off;
- contracts: NFE accounting and budget errors, determinism, dtypes/devices, shapes,
  manual stepping, the registry, and input/NaN errors.
"""

from __future__ import annotations

import contextlib
import functools
import re

import pytest
import torch
from oracle import (
    ExactStatistics,
    fit_slope,
    gaussian,
    gaussian_pf_ode_flow,
    gen,
    make_sde,
    order_problem,
    random_gm,
)

import scoresde as sd
from scoresde.analytic import GaussianMixture
from scoresde.samplers import (
    SOLVERS,
    BudgetError,
    FixedGridSolver,
    SamplingError,
    Solver,
    get_grid,
    grid_label,
    make_solver,
    register_solver,
    tweedie_denoise,
)

F64 = torch.float64
MU = (0.7, -1.3)          # mean of the Gaussian test data


@contextlib.contextmanager
def _default_dtype(dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)




# Every registered solver with its main options: (id, name, options).
SOLVER_CASES = [
    ("euler_maruyama", "euler_maruyama", {}),
    ("ancestral-posterior", "ancestral", {"variance": "posterior"}),
    ("ancestral-beta", "ancestral", {"variance": "beta"}),
    ("ddim-eta0", "ddim", {"eta": 0.0}),
    ("ddim-eta0.5", "ddim", {"eta": 0.5}),
    ("ddim-eta1", "ddim", {"eta": 1.0}),
    ("heun", "heun", {}),
    ("heun-churn", "heun", {"churn": 10.0}),
    ("dpm_solver", "dpm_solver", {}),
    ("pc-euler_maruyama", "pc", {"predictor": "euler_maruyama"}),
    ("pc-ancestral", "pc", {"predictor": "ancestral"}),
    ("pc-ddim", "pc", {"predictor": "ddim"}),
    ("pf_ode-euler", "pf_ode", {"method": "euler"}),
    ("pf_ode-midpoint", "pf_ode", {"method": "midpoint"}),
    ("pf_ode-rk4", "pf_ode", {"method": "rk4"}),
    ("torchsde-euler", "torchsde", {"method": "euler"}),
    ("torchsde-srk", "torchsde", {"method": "srk"}),
    ("torchsde-reversible_heun", "torchsde", {"method": "reversible_heun"}),
    # the few-step solvers (their own checks: tests/test_fewstep_solvers.py)
    ("unipc", "unipc", {}),
    ("unipc-p3-eps", "unipc", {"solver_order": 3, "prediction": "eps"}),
    ("dpm_solver_3m", "dpm_solver_3m", {}),
    ("dpm_solver_sde", "dpm_solver_sde", {}),
    ("dpm_solver_sde-3m", "dpm_solver_sde", {"solver_order": 3}),
    ("dpm_solver_singlestep", "dpm_solver_singlestep", {}),
    ("deis", "deis", {}),
    ("ipndm", "ipndm", {}),
    ("ggf", "ggf", {}),
    # SA-Solver (its own checks: tests/test_sa_solver.py)
    ("sa_solver", "sa_solver", {}),
    ("sa_solver-tau0-p2c0", "sa_solver", {"tau": 0.0, "predictor_order": 2, "corrector_order": 0}),
]
# Further methods/options whose cost formula differs: NFE accounting covers them too.
EXTRA_CASES = [
    ("pf_ode-heun2", "pf_ode", {"method": "heun2"}),
    ("pf_ode-heun3", "pf_ode", {"method": "heun3"}),
    ("pf_ode-default", "pf_ode", {}),
    ("torchsde-milstein", "torchsde", {"method": "milstein"}),
    ("torchsde-midpoint", "torchsde", {"method": "midpoint"}),
    ("torchsde-heun", "torchsde", {"method": "heun"}),
    ("pc-heun-2corrector", "pc", {"predictor": "heun", "n_corrector_steps": 2}),
    ("pc-dpm-0corrector", "pc", {"predictor": "dpm_solver", "n_corrector_steps": 0}),
]
# adaptive solves (nfe=None); their options always carry the tolerances
ADAPTIVE_CASES = [
    ("pf_ode-dopri5", "pf_ode", {"rtol": 1e-5, "atol": 1e-5}),
    ("pf_ode-bosh3", "pf_ode", {"method": "bosh3", "rtol": 1e-4, "atol": 1e-4}),
    ("torchsde-adaptive", "torchsde", {"rtol": 1e-2, "atol": 1e-2}),
    ("ggf-adaptive", "ggf", {"rtol": 0.1, "atol": 0.01}),
    ("ggf-adaptive-resample", "ggf", {"rtol": 0.1, "atol": 0.01, "noise": "resample"}),
]
FIXED_GRID_CASES = [c for c in SOLVER_CASES if isinstance(make_solver(c[1], **c[2]), FixedGridSolver)]


def _params(cases):
    return [pytest.param(name, opts, id=cid) for cid, name, opts in cases]


def _budget(solver: Solver, steps: int, denoise: bool = True) -> int:
    return solver.nfe_for_steps(steps) + int(denoise)


def _nfe(name: str, opts: dict, steps: int, denoise: bool = True) -> int | None:
    """``None`` (an adaptive solve) for the adaptive cases, else the budget of ``steps`` steps."""
    return None if "rtol" in opts else _budget(make_solver(name, **opts), steps, denoise)


def _record_times(model: sd.ScoreModel):
    """Wrap a model's network so that every time it is called with is recorded."""
    seen: list[torch.Tensor] = []
    inner = model.net

    def net(x, t):
        seen.append(t.detach().clone())
        return inner(x, t)

    return sd.ScoreModel(net, model.sde, prediction=model.prediction), seen


@functools.cache
def _small_problem(sde_name: str = "vp"):
    """A cheap 2-D, 3-component mixture for the contract tests."""
    gm = random_gm(2, 3, seed=1)
    return gm, gm.as_model(make_sde(sde_name))


def test_cases_cover_every_registered_solver():
    builtin = {name for name, cls in SOLVERS.items() if cls.__module__.startswith("scoresde.")}
    assert builtin == {name for _, name, _ in SOLVER_CASES}
    for _, name, opts in SOLVER_CASES + EXTRA_CASES:
        s = make_solver(name, **opts)
        assert s.name == name and s.order > 0 and s.nfe_for_steps(1) >= 1


# ------------------------------------------------------------------------------------------
# Samples approach the exact distribution as NFE grows
# ------------------------------------------------------------------------------------------
# The check: z-scores of the sample mean, covariance, mean log-density and responsibilities
# against their exact values (tests/oracle.py: ExactStatistics), n = 4000 samples from a
# shared x_T. Exact samples give max|z| ~ 1-2.5 (10 features); a solver's bias b shows as
# |z| ~ sqrt(n) b / sd. At the large budget max|z| < 5; at the small budget > 5.
N_DIST = 4000
Z_OK = 5.0


@functools.cache
def _dist_problem(sde_name: str, kind: str):
    if kind == "sharp":        # modes of std 0.2-0.8 two units apart: small budgets fail visibly
        gm = random_gm(2, 3, seed=0)
    else:                      # "gaussian": N(MU, 0.1 I), for reversible Heun (see its case below)
        gm = gaussian(MU, 0.1)
    sde = make_sde(sde_name)
    x_T = sde.prior_sample((N_DIST, gm.dim), gen(0), dtype=F64)
    return gm.as_model(sde), ExactStatistics(gm), x_T


def _dist(sde_name, name, opts, grid, small, large, kind="sharp"):
    cid = f"{sde_name}-{name}-{'-'.join(f'{k}={v}' for k, v in opts.items())}-{grid}"
    cid += "-adaptive" if isinstance(small, dict) else ""
    return pytest.param(sde_name, kind, name, opts, grid, small, large, id=cid.replace("--", "-"))


def _loose(tol):
    return {"rtol": tol, "atol": tol}


DIST_CASES = [
    _dist("vp", "euler_maruyama", {}, "uniform", 10, 100),
    _dist("vp", "ancestral", {"variance": "posterior"}, "quadratic", 10, 200),
    _dist("vp", "ancestral", {"variance": "beta"}, "quadratic", 10, 100),
    _dist("vp", "ddim", {"eta": 0.0}, "quadratic", 10, 200),
    _dist("vp", "ddim", {"eta": 0.5}, "quadratic", 10, 100),
    _dist("vp", "ddim", {"eta": 1.0}, "quadratic", 10, 200),
    _dist("vp", "heun", {}, "karras", 10, 60),
    _dist("vp", "heun", {"churn": 10.0}, "karras", 10, 160),
    _dist("vp", "dpm_solver", {}, "logsnr", 10, 40),
    _dist("vp", "pc", {"predictor": "euler_maruyama"}, "uniform", 11, 101),
    _dist("vp", "pc", {"predictor": "ancestral"}, "quadratic", 11, 201),
    _dist("vp", "pc", {"predictor": "ddim"}, "quadratic", 11, 201),
    _dist("vp", "pf_ode", {"method": "euler"}, "uniform", 5, 50),
    _dist("vp", "pf_ode", {"method": "midpoint"}, "uniform", 5, 41),
    _dist("vp", "pf_ode", {"method": "rk4"}, "uniform", 5, 41),
    _dist("vp", "pf_ode", {"method": "dopri5"}, "uniform", _loose(1e-1), _loose(1e-4)),
    _dist("vp", "torchsde", {"method": "euler"}, "uniform", 10, 100),
    _dist("vp", "torchsde", {"method": "srk"}, "uniform", 41, 201),
    _dist("vp", "torchsde", {"method": "euler"}, "uniform", _loose(0.5), _loose(1e-2)),
    # Reversible Heun: its parasitic mode grows (|rho| = |h lambda| + sqrt(1 + h^2 lambda^2) > 1
    # for the contracting reverse drift) and, through a nonlinear score, biases the samples:
    # on the mixtures above it still has max|z| ~ 10-100 at 400 NFE (Euler: < 2 at 100).
    # For Gaussian data (linear score) the mode does not reach x: it blows up at 50 NFE and
    # is exact in distribution at 200.
    _dist("vp", "torchsde", {"method": "reversible_heun"}, "uniform", 50, 200, kind="gaussian"),
    # VE and sub-VP: a representative subset
    _dist("ve", "euler_maruyama", {}, "uniform", 10, 200),
    _dist("ve", "ancestral", {"variance": "posterior"}, "logsnr", 10, 400),
    _dist("ve", "ddim", {"eta": 0.0}, "logsnr", 5, 200),
    _dist("ve", "heun", {}, "karras", 10, 60),
    _dist("ve", "dpm_solver", {}, "logsnr", 5, 40),
    _dist("ve", "pf_ode", {"method": "rk4"}, "logsnr", 5, 81),
    _dist("ve", "pc", {"predictor": "euler_maruyama"}, "uniform", 11, 201),
    _dist("ve", "pc", {"predictor": "ancestral"}, "logsnr", 11, 201),
    _dist("ve", "torchsde", {"method": "euler"}, "uniform", 10, 200),
    _dist("subvp", "euler_maruyama", {}, "uniform", 10, 100),
    _dist("subvp", "ancestral", {"variance": "beta"}, "quadratic", 10, 100),
    _dist("subvp", "ddim", {"eta": 0.0}, "quadratic", 10, 200),
    _dist("subvp", "heun", {}, "karras", 10, 60),
    _dist("subvp", "dpm_solver", {}, "logsnr", 10, 40),
    _dist("subvp", "pf_ode", {"method": "rk4"}, "uniform", 5, 41),
    _dist("subvp", "pc", {"predictor": "euler_maruyama"}, "uniform", 11, 201),
]


@pytest.mark.parametrize("sde_name, kind, name, opts, grid, small, large", DIST_CASES)
def test_samples_approach_exact_distribution(sde_name, kind, name, opts, grid, small, large):
    model, stats, x_T = _dist_problem(sde_name, kind)

    def max_z(budget):
        kw = dict(opts, nfe=budget) if isinstance(budget, int) else dict(opts, nfe=None, **budget)
        res = sd.sample(model, solver=name, x_T=x_T, generator=gen(3), grid=grid, **kw)
        assert res.x_T is x_T and res.x.shape == x_T.shape
        return stats.max_abs_z(res.x), res.nfe

    z_small, nfe_small = max_z(small)
    z_large, nfe_large = max_z(large)
    assert nfe_large > nfe_small
    assert z_large < Z_OK, (f"{name} {opts} at nfe={nfe_large}: max |z| = {z_large:.2f} >= {Z_OK} "
                            f"(small budget nfe={nfe_small}: {z_small:.2f})")
    assert z_small > Z_OK, f"{name} {opts}: nfe={nfe_small} gave max |z| = {z_small:.2f}, test lacks power"


def test_exact_statistics_calibrated():
    """The z-scores used above are ~N(0, 1) for exact samples, and detect a small bias."""
    _, stats, _ = _dist_problem("vp", "sharp")
    gm = stats.gm
    zs = torch.stack([stats.zscores(gm.sample(N_DIST, gen(100 + s), dtype=F64)) for s in range(10)])
    assert float(zs.abs().max()) < 4.5
    assert 0.6 < float(zs.std()) < 1.4
    shrunk = gm.sample(N_DIST, gen(7), dtype=F64)
    shrunk = gm.mean + 0.9 * (shrunk - gm.mean)          # covariance 19 % too small
    assert stats.max_abs_z(shrunk) > 2 * Z_OK


# ------------------------------------------------------------------------------------------
# Convergence orders of the deterministic solvers
# ------------------------------------------------------------------------------------------
ORDER_T_END = 1e-3


def _order_problem(sde_name: str):
    return order_problem(sde_name, 256, 1e-11, ORDER_T_END)


def _order(name, opts, grid, order, steps):
    cid = f"{name}-{'-'.join(f'{k}={v}' for k, v in opts.items())}-{grid}"
    return pytest.param(name, opts, grid, order, steps, id=cid.replace("--", "-"))


ORDER_CASES = [
    _order("ddim", {"eta": 0.0}, "uniform", 1, (10, 20, 40, 80, 160)),
    _order("ddim", {"eta": 0.0}, "logsnr", 1, (10, 20, 40, 80, 160)),
    _order("dpm_solver", {}, "logsnr", 2, (20, 40, 80, 160)),
    _order("heun", {}, "logsnr", 2, (10, 20, 40, 80, 160)),
    _order("heun", {}, "karras", 2, (10, 20, 40, 80, 160)),
    _order("pf_ode", {"method": "euler"}, "uniform", 1, (40, 80, 160, 320)),
    _order("pf_ode", {"method": "midpoint"}, "uniform", 2, (20, 40, 80, 160)),
    _order("pf_ode", {"method": "heun3"}, "uniform", 3, (20, 40, 80, 160)),
    _order("pf_ode", {"method": "rk4"}, "uniform", 4, (20, 40, 80)),
]


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("name, opts, grid, order, steps", ORDER_CASES)
def test_deterministic_solver_order(sde_name, name, opts, grid, order, steps):
    model, x_T, ref = _order_problem(sde_name)
    solver = make_solver(name, **opts)
    assert not solver.stochastic
    assert solver.order == order
    nfes = [_budget(solver, n, denoise=False) for n in steps]
    errs = []
    for nfe in nfes:
        res = sd.sample(model, solver=name, nfe=nfe, x_T=x_T, denoise=False, grid=grid,
                        t_end=ORDER_T_END, **opts)
        errs.append(float((res.x - ref).norm(dim=1).mean()))
    slope = -fit_slope(nfes, errs)
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False)), errs
    assert abs(slope - order) < 0.25, f"fitted order {slope:.3f}, declared {order}; errors {errs}"


# ------------------------------------------------------------------------------------------
# Closed forms: Gaussian data
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sde_name", ["vp", "vp_cosine", "subvp", "ve"])
@pytest.mark.parametrize("name, grid", [("ddim", "uniform"), ("ddim", "logsnr"), ("dpm_solver", "logsnr"),
                                        ("heun", "karras")])
def test_first_order_exponential_solvers_exact_for_point_mass(sde_name, name, grid):
    """For data = a point mass, x0-prediction is exact and the PF-ODE solution is linear in
    sigma/alpha: DDIM (and DPM-Solver++, EDM-Heun) hit the closed form at every grid time,
    whatever the number of steps -- one step included."""
    sde = make_sde(sde_name)
    model = gaussian(MU, 0.0).as_model(sde)
    x_T = sde.prior_sample((64, 2), gen(0), dtype=F64)
    for steps in (1, 2, 7):
        solver = make_solver(name)
        res = sd.sample(model, solver=name, nfe=_budget(solver, steps, denoise=False), x_T=x_T,
                        denoise=False, grid=grid, trajectory=True)
        scale = x_T.abs().max()
        for k, t in enumerate(res.times.tolist()):
            exact = gaussian_pf_ode_flow(x_T, sde.T, t, sde, MU, 0.0)
            torch.testing.assert_close(res.trajectory[k], exact, rtol=0, atol=1e-11 * scale)
    # Tweedie's denoising step then lands on the point itself
    res = sd.sample(model, solver=name, nfe=_budget(solver, 3), x_T=x_T, grid=grid)
    torch.testing.assert_close(res.x, torch.tensor(MU, dtype=F64).expand(64, 2), rtol=0, atol=1e-9)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_ddim_converges_to_gaussian_pf_ode_flow_with_order_one(sde_name):
    sde, v, t_end = make_sde(sde_name), 0.5, 1e-3
    model = gaussian(MU, v).as_model(sde)
    x_T = sde.prior_sample((64, 2), gen(0), dtype=F64)
    exact = gaussian_pf_ode_flow(x_T, sde.T, t_end, sde, MU, v)
    # the closed form is the PF-ODE's solution: an accurate generic solver agrees with it
    rk4 = sd.sample(model, solver="pf_ode", method="rk4", nfe=800, x_T=x_T, denoise=False, t_end=t_end,
                    grid="logsnr")
    torch.testing.assert_close(rk4.x, exact, rtol=0, atol=1e-7 * float(x_T.abs().max()))
    nfes = [10, 20, 40, 80, 160]
    errs = [float((sd.sample(model, solver="ddim", nfe=k, x_T=x_T, denoise=False, t_end=t_end).x - exact)
                  .norm(dim=1).mean()) for k in nfes]
    assert abs(-fit_slope(nfes, errs) - 1.0) < 0.15, errs
    assert errs[-1] < 0.02 * float(exact.norm(dim=1).mean())


@pytest.mark.parametrize("sde_name", ["vp", "vp_cosine", "subvp", "ve"])
@pytest.mark.parametrize("grid", ["uniform", "logsnr"])
def test_ddim_eta1_is_ancestral_posterior_draw_for_draw(sde_name, grid):
    sde = make_sde(sde_name)
    model = random_gm(2, 3, seed=4).as_model(sde)
    x_T = sde.prior_sample((128, 2), gen(0), dtype=F64)
    a = sd.sample(model, solver="ddim", eta=1.0, nfe=25, x_T=x_T, generator=gen(7), grid=grid,
                  trajectory=True)
    b = sd.sample(model, solver="ancestral", variance="posterior", nfe=25, x_T=x_T, generator=gen(7),
                  grid=grid, trajectory=True)
    scale = float(b.trajectory.abs().max())
    torch.testing.assert_close(a.trajectory, b.trajectory, rtol=1e-12, atol=1e-12 * scale)
    # and not by accident: the other variance differs
    c = sd.sample(model, solver="ancestral", variance="beta", nfe=25, x_T=x_T, generator=gen(7), grid=grid)
    assert float((c.x - b.x).abs().max()) > 1e-3


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("given_x_T", [True, False])
def test_ddpm_algorithm_2_recovered_exactly(variance, given_x_T):
    """Ho et al. (2020), Algorithm 2, written out by hand on the schedule's betas."""
    N, B = 100, 32
    sch = sd.VPSDE().discretize(N)
    net = sd.nets.MLPScoreNet(dim=2, hidden=32, depth=2, generator=gen(0)).double()
    model, seen = _record_times(sd.ScoreModel(net, sd.VPSDE.from_schedule(sch), prediction="eps"))
    x_T = torch.randn(B, 2, generator=gen(1), dtype=F64) if given_x_T else None
    with _default_dtype(F64):      # so that a drawn x_T is float64 like the hand loop's
        res = sd.sample(model, (B, 2), solver="ancestral", nfe=N, t_end=1 / N, grid="uniform", x_T=x_T,
                        generator=gen(5), variance=variance)
    assert res.nfe == N

    g = gen(5)
    x = torch.randn(B, 2, generator=g, dtype=F64) if x_T is None else x_T.clone()
    sigma2 = sch.betas if variance == "beta" else sch.posterior_variance
    fed = []
    with torch.no_grad():
        for i in reversed(range(N)):                  # DDPM's t = N..1 is index i = N-1..0
            t_i = torch.full((B,), (i + 1) / N, dtype=F64)
            fed.append(t_i[0].item())
            eps = net(x, t_i)
            x = (x - sch.betas[i] / torch.sqrt(1 - sch.alphas_cumprod[i]) * eps) / torch.sqrt(sch.alphas[i])
            if i > 0:
                x = x + torch.sqrt(sigma2[i]) * torch.randn(x.shape, generator=g, dtype=F64)
    torch.testing.assert_close(res.x, x, rtol=1e-10, atol=1e-10)
    # the network saw DDPM's times t_i = (i + 1)/N, largest first, each with shape (B,)
    assert all(t.shape == (B,) for t in seen)
    torch.testing.assert_close(torch.tensor([float(t[0]) for t in seen], dtype=F64),
                               torch.tensor(fed, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.times, sch.times.flip(0), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------
# NFE accounting and budgets
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, opts", _params(SOLVER_CASES + EXTRA_CASES))
def test_nfe_accounting(name, opts):
    _, model = _small_problem()
    solver = make_solver(name, **opts)
    for denoise in (True, False):
        reachable = solver.reachable(_budget(solver, 5, denoise), extra=int(denoise))
        assert len(reachable) == 5
        for nfe in (reachable[0], reachable[2], reachable[-1]):
            before = model.n_evals
            res = sd.sample(model, (6, 2), solver=name, nfe=nfe, generator=gen(0), denoise=denoise, **opts)
            steps = res.times.shape[0] - 1
            assert res.nfe == nfe == model.n_evals - before
            assert solver.nfe_for_steps(steps) + int(denoise) == nfe
            assert solver.steps_for_nfe(nfe, extra=int(denoise)) == steps


@pytest.mark.parametrize("name, opts", _params(ADAPTIVE_CASES))
def test_adaptive_solvers_report_counted_nfe(name, opts):
    gm, model = _small_problem()
    for denoise in (True, False):
        before = model.n_evals
        res = sd.sample(model, (6, 2), solver=name, nfe=None, generator=gen(0), denoise=denoise, **opts)
        assert res.nfe == model.n_evals - before > 5
        assert res.times.tolist() == [model.sde.T, model.sde.sample_eps]
    # tighter tolerances cost more evaluations
    tight = dict(opts, rtol=opts["rtol"] / 10, atol=opts["atol"] / 10)
    assert sd.sample(model, (6, 2), solver=name, nfe=None, generator=gen(0), **tight).nfe > res.nfe


def _listed_budgets(message: str) -> list[int]:
    found = re.search(r"\[([\d, ]+)\]", message)
    assert found, message
    return [int(k) for k in found.group(1).split(",")]


@pytest.mark.parametrize("name, opts, nfe", [
    ("heun", {}, 11),                                    # 2n - 1 + 1: even totals only
    ("heun", {}, 3),
    ("pc", {}, 10),                                      # 2n + 1: odd totals only
    ("pc", {"n_corrector_steps": 2}, 12),
    ("pf_ode", {"method": "rk4"}, 10),                   # 4n + 1
    ("pf_ode", {"method": "rk4"}, 3),                    # too small for one step
    ("torchsde", {"method": "srk"}, 8),
    ("torchsde", {"method": "reversible_heun"}, 2),      # n + 1 + 1
])
def test_budget_error_lists_reachable_budgets(name, opts, nfe):
    _, model = _small_problem()
    with pytest.raises(BudgetError) as info:
        sd.sample(model, (2, 2), solver=name, nfe=nfe, generator=gen(0), **opts)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert f"nfe={nfe}" in msg and name in msg
    listed = _listed_budgets(msg)
    assert nfe not in listed and listed == sorted(listed)
    assert any(k > nfe for k in listed)
    for k in listed:                                     # every listed budget really works
        assert sd.sample(model, (2, 2), solver=name, nfe=k, generator=gen(0), **opts).nfe == k


def test_bad_budgets():
    _, model = _small_problem()
    for nfe in (1, 0, -4):
        with pytest.raises(ValueError, match="too small"):
            sd.sample(model, (2, 2), solver="euler_maruyama", nfe=nfe)
    with pytest.raises(ValueError, match="too small"):
        sd.sample(model, (2, 2), solver="euler_maruyama", nfe=0, denoise=False)
    assert sd.sample(model, (2, 2), solver="euler_maruyama", nfe=1, denoise=False).nfe == 1
    for nfe in (2.5, True, "10"):
        with pytest.raises(TypeError, match="nfe must be an integer"):
            sd.sample(model, (2, 2), solver="ddim", nfe=nfe)
    for name in ("euler_maruyama", "ancestral", "ddim", "heun", "dpm_solver", "pc"):
        with pytest.raises(ValueError, match="needs an NFE budget"):
            sd.sample(model, (2, 2), solver=name, nfe=None)
    with pytest.raises(ValueError, match="adaptive"):       # an adaptive method with a fixed budget
        sd.sample(model, (2, 2), solver="pf_ode", method="dopri5", nfe=11)
    with pytest.raises(ValueError, match="adaptive method"):  # a fixed method without a budget
        sd.sample(model, (2, 2), solver="pf_ode", method="rk4", nfe=None)
    with pytest.raises(ValueError, match="trajectory"):
        sd.sample(model, (2, 2), solver="pf_ode", nfe=None, trajectory=True)
    with pytest.raises(ValueError, match="trajector"):
        sd.sample(model, (2, 2), solver="torchsde", nfe=11, trajectory=True)
    with pytest.raises(ValueError, match="uniform steps only"):
        sd.sample(model, (2, 2), solver="torchsde", nfe=11, grid="logsnr")


# ------------------------------------------------------------------------------------------
# Determinism, x_T, dtypes, devices, shapes
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, opts", _params(SOLVER_CASES + EXTRA_CASES))
def test_determinism_and_declared_stochasticity(name, opts):
    _, model = _small_problem()
    solver = make_solver(name, **opts)
    nfe = solver.reachable(_budget(solver, 6), extra=1)[-1]
    run = functools.partial(sd.sample, model, (64, 2), solver=name, nfe=nfe, **opts)
    a, b, c = run(generator=gen(1)), run(generator=gen(1)), run(generator=gen(2))
    assert torch.equal(a.x, b.x) and torch.equal(a.x_T, b.x_T)
    assert not torch.allclose(a.x, c.x)
    # the drawn x_T is the prior draw of the generator
    torch.testing.assert_close(a.x_T, model.sde.prior_sample((64, 2), gen(1)), rtol=0, atol=0)
    # same x_T, different generators: the results differ exactly when the solver is stochastic
    d, e = run(x_T=a.x_T, generator=gen(3)), run(x_T=a.x_T, generator=gen(4))
    assert d.x_T is a.x_T
    assert torch.equal(d.x, e.x) == (not solver.stochastic)


def test_x_T_shared_across_deterministic_solvers():
    """From one x_T, different deterministic solvers approximate the same PF-ODE map."""
    model, x_T, ref = _order_problem("vp")
    runs = [("ddim", 400, "logsnr", {}), ("dpm_solver", 100, "logsnr", {}), ("heun", 99, "karras", {}),
            ("pf_ode", 200, "uniform", {"method": "rk4"})]
    outs = [sd.sample(model, solver=name, nfe=nfe, x_T=x_T, denoise=False, grid=grid, t_end=ORDER_T_END,
                      **o).x for name, nfe, grid, o in runs]
    for x in outs:
        assert float((x - ref).norm(dim=1).max()) < 0.05
    other = model.sde.prior_sample(x_T.shape, gen(99), dtype=F64)
    assert float((sd.sample(model, solver="dpm_solver", nfe=100, x_T=other, denoise=False, grid="logsnr",
                            t_end=ORDER_T_END).x - ref).norm(dim=1).mean()) > 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, opts", _params(SOLVER_CASES + ADAPTIVE_CASES[:1]))
def test_output_dtype_follows_x_T(name, opts, dtype):
    _, model = _small_problem()
    x_T = model.sde.prior_sample((8, 2), gen(0), dtype=dtype)
    res = sd.sample(model, solver=name, nfe=_nfe(name, opts, 4), x_T=x_T, generator=gen(1), **opts)
    assert res.x.dtype == dtype and res.x.device == x_T.device and res.x.shape == x_T.shape
    assert bool(torch.isfinite(res.x).all())
    assert res.times.dtype == torch.float64


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
def test_without_x_T_default_dtype_on_model_device(default):
    _, model = _small_problem()
    with _default_dtype(default):
        for name in ("ddim", "pf_ode", "torchsde"):
            for g in (gen(0), None):
                res = sd.sample(model, (4, 2), solver=name, nfe=None if name == "pf_ode" else 9, generator=g)
                assert res.x.dtype == default and res.x_T.dtype == default
                assert res.x.device == model.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name, opts", _params(SOLVER_CASES + ADAPTIVE_CASES[:1]))
def test_cuda_device_preserved(name, opts):
    gm = random_gm(2, 3, seed=1)
    model = gm.as_model(sd.VPSDE(), device="cuda")
    nfe = _nfe(name, opts, 4)
    for g in (torch.Generator(device="cuda").manual_seed(0), None):
        res = sd.sample(model, (8, 2), solver=name, nfe=nfe, generator=g, **opts)
        assert res.x.device.type == "cuda" and res.x.dtype == torch.get_default_dtype()
    x_T = torch.randn(8, 2, device="cuda", dtype=F64)
    res = sd.sample(model, solver=name, nfe=nfe, x_T=x_T, generator=torch.Generator(device="cuda"), **opts)
    assert res.x.device.type == "cuda" and res.x.dtype == F64 and bool(torch.isfinite(res.x).all())


@pytest.mark.parametrize("name, opts", _params([c for c in SOLVER_CASES if c[1] != "torchsde"]))
def test_trajectory_shapes(name, opts):
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 4), torch.eye(4)[None], event_shape=(1, 2, 2))
    model = gm.as_model(sd.VPSDE())
    solver = make_solver(name, **opts)
    steps = 5
    x_T = torch.randn(3, 1, 2, 2, generator=gen(0))
    for denoise in (True, False):
        res = sd.sample(model, solver=name, nfe=_budget(solver, steps, denoise), x_T=x_T, generator=gen(1),
                        denoise=denoise, trajectory=True, **opts)
        assert res.times.shape == (steps + 1,)
        assert float(res.times[0]) == 1.0 and float(res.times[-1]) == model.sde.sample_eps
        assert res.trajectory.shape == (steps + 1 + int(denoise), 3, 1, 2, 2)
        assert torch.equal(res.trajectory[0], x_T) and torch.equal(res.trajectory[-1], res.x)
    assert sd.sample(model, solver=name, nfe=_budget(solver, steps), x_T=x_T, **opts).trajectory is None


@pytest.mark.parametrize("name, opts", _params(SOLVER_CASES + ADAPTIVE_CASES[:1]))
def test_denoise_false_returns_x_at_t_end(name, opts):
    """denoise=True is denoise=False (same steps, same noise) plus one Tweedie step
    x0 = (x + sigma^2 score)/alpha at t_end, computed here from the exact score."""
    gm, model = _small_problem()
    sde, t_end = model.sde, 2e-3
    x_T = sde.prior_sample((16, 2), gen(0), dtype=F64)
    run = functools.partial(sd.sample, model, solver=name, x_T=x_T, t_end=t_end, **opts)
    den = run(nfe=_nfe(name, opts, 4), generator=gen(1))
    raw = run(nfe=_nfe(name, opts, 4, denoise=False), generator=gen(1), denoise=False)
    assert raw.t_end == t_end and torch.equal(raw.times, den.times)
    t64 = torch.tensor(t_end, dtype=F64)
    alpha, sigma = float(sde.alpha(t64)), float(sde.sigma(t64))
    by_hand = (raw.x + sigma ** 2 * gm.score(raw.x, t_end, sde)) / alpha
    torch.testing.assert_close(den.x, by_hand, rtol=1e-12, atol=1e-12)
    assert den.nfe == raw.nfe + 1


@pytest.mark.parametrize("name, opts", _params(SOLVER_CASES))
def test_event_shape_matches_flat_sampling(name, opts):
    """Data of event shape (1, 2, 2) gives exactly the samples of the flat (4,) problem."""
    flat = random_gm(4, 2, seed=3)
    image = GaussianMixture(flat.weights, flat.means, flat.covs, event_shape=(1, 2, 2))
    sde = sd.VPSDE()
    solver = make_solver(name, **opts)
    x_T = sde.prior_sample((16, 1, 2, 2), gen(0), dtype=F64)
    kw = dict(solver=name, nfe=_budget(solver, 4), **opts)
    a = sd.sample(image.as_model(sde), x_T=x_T, generator=gen(1), **kw)
    b = sd.sample(flat.as_model(sde), x_T=x_T.reshape(16, 4), generator=gen(1), **kw)
    assert a.x.shape == (16, 1, 2, 2)
    torch.testing.assert_close(a.x.reshape(16, 4), b.x, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------
# The network is only called inside [t_end, T]
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("name, opts", _params(SOLVER_CASES + ADAPTIVE_CASES))
def test_network_called_only_inside_time_range(name, opts, sde_name):
    gm = random_gm(2, 2, seed=5)
    model, seen = _record_times(gm.as_model(make_sde(sde_name)))
    t_end = model.sde.sample_eps
    x_T = model.sde.prior_sample((5, 2), gen(1), dtype=F64)
    res = sd.sample(model, solver=name, nfe=_nfe(name, opts, 5), x_T=x_T, generator=gen(0), **opts)
    ts = torch.cat([t.reshape(-1) for t in seen])
    assert len(seen) == res.nfe and all(t.shape == (5,) for t in seen)
    assert float(ts.min()) >= t_end and float(ts.max()) <= model.sde.T


# ------------------------------------------------------------------------------------------
# Manual stepping
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid_name", ["uniform", "karras"])
@pytest.mark.parametrize("name, opts", _params(FIXED_GRID_CASES))
def test_manual_stepping_reproduces_sample(name, opts, grid_name):
    _, model = _small_problem()
    solver = make_solver(name, **opts)
    x_T = model.sde.prior_sample((32, 2), gen(0), dtype=F64)
    steps = 6
    res = sd.sample(model, solver=name, nfe=_budget(solver, steps, denoise=False), x_T=x_T, generator=gen(1),
                    denoise=False, grid=grid_name, **opts)

    grid = get_grid(grid_name)(model.sde, steps, model.sde.sample_eps)
    before = model.n_evals
    ctx = solver.start(model, x_T, grid, generator=gen(1))
    x = x_T
    with torch.no_grad():
        for i in range(len(grid) - 1):
            x = solver.step(ctx, x, i)
    assert model.n_evals - before == solver.nfe_for_steps(steps)
    assert ctx.n_steps == steps and torch.equal(ctx.grid, res.times)
    torch.testing.assert_close(x, res.x, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------
@pytest.fixture
def scratch_registry():
    """Registers made inside a test are removed afterwards."""
    saved = dict(SOLVERS)
    yield
    SOLVERS.clear()
    SOLVERS.update(saved)


def test_unknown_solver_lists_registered_names():
    _, model = _small_problem()
    with pytest.raises(ValueError, match="unknown solver 'rk45'") as info:
        sd.sample(model, (2, 2), solver="rk45")
    for name in SOLVERS:
        assert repr(name) in str(info.value)


def test_unknown_option_lists_accepted_options():
    _, model = _small_problem()
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['etta'\].*\['eta'\]"):
        sd.sample(model, (2, 2), solver="ddim", etta=0.5)
    with pytest.raises(TypeError, match="churn"):
        sd.sample(model, (2, 2), solver="heun", eta=0.5)
    with pytest.raises(TypeError, match="with a solver instance"):
        sd.sample(model, (2, 2), solver=make_solver("ddim"), eta=0.5)
    assert set(SOLVERS["pc"].options()) == {"predictor", "snr", "n_corrector_steps", "predictor_options"}


def test_register_custom_solver_usable_by_sample(scratch_registry):
    """A new solver is one class and one registration: here the PF-ODE Euler step written
    against the StepContext, which must agree with torchdiffeq's Euler on the same grid."""

    @register_solver("my_pf_euler")
    class MyPFEuler(FixedGridSolver):
        order = 1.0

        def step(self, ctx, x, i):
            h = ctx.t[i + 1] - ctx.t[i]
            return x + h * (ctx.f[i] * x - 0.5 * ctx.g2[i] * ctx.score(x, i))

    assert SOLVERS["my_pf_euler"] is MyPFEuler and MyPFEuler.name == "my_pf_euler"
    _, model = _small_problem()
    x_T = model.sde.prior_sample((16, 2), gen(0), dtype=F64)
    mine = sd.sample(model, solver="my_pf_euler", nfe=21, x_T=x_T, grid="logsnr")
    ref = sd.sample(model, solver="pf_ode", method="euler", nfe=21, x_T=x_T, grid="logsnr")
    assert mine.nfe == 21 and isinstance(mine.solver, MyPFEuler)
    torch.testing.assert_close(mine.x, ref.x, rtol=1e-12, atol=1e-12)
    # the function form, and a solver instance passed directly
    register_solver("my_pf_euler_2", MyPFEuler)
    assert sd.sample(model, solver="my_pf_euler_2", nfe=21, x_T=x_T, grid="logsnr").nfe == 21
    assert sd.sample(model, solver=MyPFEuler(), nfe=21, x_T=x_T, grid="logsnr").nfe == 21

    with pytest.raises(TypeError, match="Solver subclass"):
        register_solver("bad", object)
    with pytest.raises(ValueError, match="non-empty string"):
        register_solver("", MyPFEuler)


def test_solver_interface_is_abstract():
    with pytest.raises(TypeError):
        FixedGridSolver()                      # step is abstract

    class NoStep(FixedGridSolver):
        pass

    with pytest.raises(TypeError):
        NoStep()


# ------------------------------------------------------------------------------------------
# Bad input and NaN detection
# ------------------------------------------------------------------------------------------
def test_bad_solver_options():
    _, model = _small_problem()
    for eta in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="eta must be a number in"):
            sd.sample(model, (2, 2), solver="ddim", nfe=5, eta=eta)
    for eta in (True, "0.5"):      # a wrong type is a TypeError (scoresde.validation)
        with pytest.raises(TypeError, match="eta must be a real number"):
            sd.sample(model, (2, 2), solver="ddim", nfe=5, eta=eta)
    bad = [("ancestral", {"variance": "fixed"}, "variance"), ("heun", {"churn": -1.0}, "churn"),
           ("pc", {"snr": 0.0}, "snr"), ("pc", {"n_corrector_steps": -1}, "n_corrector_steps"),
           ("pc", {"predictor": "pc"}, "predictor"), ("pc", {"predictor": "pf_ode"}, "predictor"),
           ("pc", {"predictor": "nope"}, "unknown solver"), ("pf_ode", {"method": "rk45"}, "unknown method"),
           ("pf_ode", {"rtol": 0.0}, "rtol"), ("torchsde", {"atol": -1.0}, "atol"),
           ("torchsde", {"method": "euler_heun"}, "method must be one of")]
    for name, opts, match in bad:
        with pytest.raises(ValueError, match=match):
            sd.sample(model, (2, 2), solver=name, **opts)


def test_bad_sample_arguments():
    gm, model = _small_problem()
    with pytest.raises(TypeError, match="ScoreModel"):
        sd.sample(lambda x, t: x, (2, 2))
    with pytest.raises(ValueError, match="unknown time grid 'cosine'"):
        sd.sample(model, (2, 2), solver="ddim", nfe=5, grid="cosine")
    for t_end in (0.0, -1e-3, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"t_end must lie in \(0, T\)"):
            sd.sample(model, (2, 2), solver="ddim", nfe=5, t_end=t_end)
    with pytest.raises(ValueError, match="shape"):
        sd.sample(model, None)
    for shape in ((4,), (4, 0), (2, 2.0)):
        with pytest.raises(ValueError, match="shape"):
            sd.sample(model, shape)
    with pytest.raises(ValueError, match="does not match"):
        sd.sample(model, (3, 2), x_T=torch.zeros(4, 2))
    with pytest.raises(TypeError, match="floating"):
        sd.sample(model, x_T=torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN/Inf"):
        sd.sample(model, x_T=torch.tensor([[0.0, float("nan")]]))


def test_network_with_wrong_output_shape():
    model = sd.ScoreModel(lambda x, t: x[:, :1], sd.VPSDE())
    for name in ("euler_maruyama", "ddim", "pf_ode", "torchsde"):
        with pytest.raises(ValueError, match=r"returned shape \(3, 1\) for input of shape \(3, 2\)"):
            sd.sample(model, (3, 2), solver=name, nfe=9)


def _nan_below_half(value=float("nan")):
    def fn(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, value), -x)
    return sd.ScoreModel.from_score_fn(fn, sd.VPSDE())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name, opts", _params(SOLVER_CASES))
def test_non_finite_score_raises_sampling_error_naming_step_and_time(name, opts, bad):
    """The score is NaN/Inf for t < 0.5: the error names the first step that evaluated it,
    and that step's times, which bracket the first evaluation below 0.5."""
    model = _nan_below_half(bad)
    solver = make_solver(name, **opts)
    steps = 9
    nfe = _budget(solver, steps)
    with pytest.raises(SamplingError) as info:
        sd.sample(model, (4, 2), solver=name, nfe=nfe, generator=gen(0), **opts)
    msg = str(info.value)
    found = re.search(r"step (\d+) of (\d+) \(t = ([\d.e+-]+) -> ([\d.e+-]+)\)", msg)
    assert found and name in msg, msg
    k, n = int(found.group(1)), int(found.group(2))
    grid = get_grid(solver.default_grid)(model.sde, steps, model.sde.sample_eps)
    assert n == steps
    assert float(found.group(3)) == pytest.approx(float(grid[k]), rel=1e-5)
    assert float(found.group(4)) == pytest.approx(float(grid[k + 1]), rel=1e-5)
    # the step evaluated below 0.5 (its end is below 0.5) and the previous ones did not
    assert float(grid[k + 1]) < 0.5 and (k == 0 or float(grid[k - 1]) >= 0.5)


@pytest.mark.parametrize("name, opts", _params(ADAPTIVE_CASES))
def test_non_finite_score_in_adaptive_solve(name, opts):
    model = _nan_below_half()
    with pytest.raises(SamplingError, match=r"NaN/Inf.*first non-finite evaluation at t = ") as info:
        sd.sample(model, (4, 2), solver=name, nfe=None, generator=gen(0), **opts)
    t_bad = float(re.search(r"at t = ([\d.e+-]+)", str(info.value)).group(1))
    assert model.sde.sample_eps <= t_bad < 0.5


def test_tweedie_denoise_is_tweedies_formula():
    gm, model = _small_problem()
    x = torch.randn(10, 2, generator=gen(0), dtype=F64)
    for t in (1e-3, 0.3):
        t64 = torch.tensor(t, dtype=F64)
        a, s = float(model.sde.alpha(t64)), float(model.sde.sigma(t64))
        torch.testing.assert_close(tweedie_denoise(model, x, t), (x + s ** 2 * gm.score(x, t, model.sde)) / a,
                                   rtol=1e-12, atol=1e-12)
    # and for a point mass it returns the point
    point = gaussian(MU, 0.0).as_model(sd.VPSDE())
    torch.testing.assert_close(tweedie_denoise(point, x, 0.2), torch.tensor(MU, dtype=F64).expand(10, 2))


# the measured defaults (experiments/default_grids.py, docs/results.md): per solver and SDE
@pytest.mark.parametrize("sde_name, name, grid", [
    ("vp", "heun", "quadratic"), ("ve", "heun", "karras"), ("subvp", "heun", "uniform"),
    ("vp", "dpm_solver", "quadratic"), ("ve", "dpm_solver", "logsnr"),
    ("vp", "ddim", "quadratic"), ("ve", "ddim", "uniform"), ("vp_cosine", "ddim", "quadratic"),
    ("vp", "euler_maruyama", "uniform"), ("ve", "euler_maruyama", "uniform")])
def test_default_grid_is_the_solvers_own(sde_name, name, grid):
    gm, model = _small_problem(sde_name)
    solver = make_solver(name)
    assert grid_label(solver.default_grid, model.sde) == grid
    nfe = _budget(solver, 6)
    a = sd.sample(model, (8, 2), solver=name, nfe=nfe, generator=gen(1))
    b = sd.sample(model, (8, 2), solver=name, nfe=nfe, generator=gen(1), grid=grid)
    assert torch.equal(a.x, b.x) and torch.equal(a.times, b.times)
    assert grid_label(make_solver("pc", predictor=name).default_grid, model.sde) == grid
