"""Time grids: every grid runs from T to t_end exactly and strictly decreasing, and each
matches its closed form (uniform in t, in sqrt(t), in log-SNR, in the EDM noise level)."""

import math

import pytest
import torch
from oracle import SDE_FACTORIES, make_sde

import scoresde as sd
from scoresde.samplers import (
    GRIDS,
    KarrasGrid,
    LogSNRGrid,
    PolyExponentialGrid,
    QuadraticGrid,
    TimeGrid,
    UniformGrid,
    get_grid,
)


def _sigma_tilde(sde, t):
    """EDM's noise level sigma/alpha = exp(-lambda/2)."""
    return torch.exp(-0.5 * sde.log_snr(t))


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_grid_endpoints_and_monotone(sde_name, grid_name, n):
    sde = make_sde(sde_name)
    for t_end in (sde.sample_eps, 1e-5, 0.3):
        g = get_grid(grid_name)(sde, n, t_end)
        assert g.dtype == torch.float64 and g.shape == (n + 1,)
        assert float(g[0]) == sde.T and float(g[-1]) == t_end          # exactly, not approximately
        assert bool((g[1:] < g[:-1]).all())
        assert bool(torch.isfinite(g).all())


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
def test_grids_match_closed_forms(sde_name):
    sde = make_sde(sde_name)
    T, t_end, n = sde.T, 1e-3, 37
    i = torch.arange(n + 1, dtype=torch.float64) / n
    tight = dict(rtol=1e-12, atol=1e-12)

    # uniform in t
    torch.testing.assert_close(UniformGrid()(sde, n, t_end), T + i * (t_end - T), **tight)
    # uniform in sqrt(t)
    q = QuadraticGrid()(sde, n, t_end)
    torch.testing.assert_close(q.sqrt(), math.sqrt(T) + i * (math.sqrt(t_end) - math.sqrt(T)), **tight)
    # uniform in log-SNR: lambda(t_i) is an arithmetic sequence between lambda(T) and lambda(t_end)
    g = LogSNRGrid()(sde, n, t_end)
    lam = sde.log_snr(g)
    lam_ends = sde.log_snr(torch.tensor([T, t_end], dtype=torch.float64))
    torch.testing.assert_close(lam, lam_ends[0] + i * (lam_ends[1] - lam_ends[0]), rtol=1e-9, atol=1e-9)
    # Karras: uniform in sigma_tilde^(1/rho), for the default rho = 7 and another one
    for rho in (7.0, 3.0):
        grid = KarrasGrid(rho) if rho != 7.0 else KarrasGrid()
        g = grid(sde, n, t_end)
        s = _sigma_tilde(sde, g) ** (1 / rho)
        s_ends = _sigma_tilde(sde, torch.tensor([T, t_end], dtype=torch.float64)) ** (1 / rho)
        torch.testing.assert_close(s, s_ends[0] + i * (s_ends[1] - s_ends[0]), rtol=1e-9, atol=1e-12)


def test_grids_differ_and_concentrate_near_t_end():
    """The non-uniform grids put more points near t_end than the uniform one (their reason
    to exist), and Karras with a larger rho more so."""
    sde = sd.VPSDE()
    n, t_end = 50, 1e-3
    below = {name: int((get_grid(name)(sde, n, t_end) < 0.1).sum()) for name in GRIDS}
    for name in ("quadratic", "logsnr", "karras"):
        assert below[name] > below["uniform"] + 5, below
    few = int((KarrasGrid(2.0)(sde, n, t_end) < 0.1).sum())
    assert below["karras"] > few


def test_get_grid_and_custom_grid():
    assert isinstance(get_grid("uniform"), UniformGrid)
    g = KarrasGrid(5.0)
    assert get_grid(g) is g
    with pytest.raises(ValueError, match="unknown time grid 'cosine'.*karras.*logsnr.*quadratic.*uniform"):
        get_grid("cosine")
    with pytest.raises(ValueError, match="unknown time grid"):
        get_grid(3)

    class Cubic(TimeGrid):
        def _grid(self, sde, n, t_end):
            return t_end + (sde.T - t_end) * torch.linspace(1, 0, n + 1, dtype=torch.float64) ** 3

    grid = Cubic()(sd.VPSDE(), 10, 1e-3)
    assert float(grid[0]) == 1.0 and float(grid[-1]) == 1e-3

    class Broken(TimeGrid):  # not decreasing: must be refused, not silently used
        def _grid(self, sde, n, t_end):
            return torch.full((n + 1,), 0.5, dtype=torch.float64)

    with pytest.raises(ValueError, match="non-decreasing grid"):
        Broken()(sd.VPSDE(), 4, 1e-3)


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
def test_grid_bad_arguments(grid_name):
    sde, grid = sd.VPSDE(), get_grid(grid_name)
    for n in (0, -3):
        with pytest.raises(ValueError, match="n_steps"):
            grid(sde, n, 1e-3)
    for n in (2.0, True, None):                  # a wrong type is a TypeError (scoresde.validation)
        with pytest.raises(TypeError, match="n_steps"):
            grid(sde, n, 1e-3)
    for t_end in (0.0, -0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"t_end must lie in \(0, T\)"):
            grid(sde, 10, t_end)


def test_karras_rho_must_be_positive():
    for rho in (0.0, -1.0):
        with pytest.raises(ValueError, match="rho"):
            KarrasGrid(rho)


# ------------------------------------------------------------------------------------------
# PolyExponentialGrid (k-diffusion's get_sigmas_polyexponential)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
def test_polyexponential_grid_closed_form(sde_name):
    """log(sigma~) = log(sigma~_min) + (1 - i/n)^rho (log(sigma~_max) - log(sigma~_min)), as in
    k-diffusion; rho = 1 (its default) is the log-SNR grid."""
    sde = make_sde(sde_name)
    T, t_end, n = sde.T, 1e-3, 23
    ends = torch.log(_sigma_tilde(sde, torch.tensor([T, t_end], dtype=torch.float64)))
    i = torch.arange(n + 1, dtype=torch.float64) / n
    for rho in (1.0, 2.0, 0.5):
        g = PolyExponentialGrid(rho)(sde, n, t_end)
        want = ends[1] + (1 - i) ** rho * (ends[0] - ends[1])
        torch.testing.assert_close(torch.log(_sigma_tilde(sde, g)), want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(PolyExponentialGrid()(sde, n, t_end), LogSNRGrid()(sde, n, t_end),
                               rtol=1e-12, atol=1e-12)
    # rho > 1 concentrates the points near t_end
    near = [int((g(sde, n, t_end) < 0.1).sum()) for g in (PolyExponentialGrid(3.0), LogSNRGrid())]
    assert near[0] > near[1]
    assert GRIDS["polyexponential"] is PolyExponentialGrid
    assert repr(PolyExponentialGrid(2)) == "PolyExponentialGrid(rho=2.0)"
    for rho in (0.0, -1.0):
        with pytest.raises(ValueError, match="rho"):
            PolyExponentialGrid(rho)


def test_dpm_solver_skip_types_are_our_grids():
    """DPM-Solver's skip types (Lu et al. 2022, `get_time_steps`): 'time_uniform' =
    linspace(T, t_end), 'time_quadratic' = linspace(sqrt T, sqrt t_end)^2, 'logSNR' = lambda^-1 of
    linspace(lambda(T), lambda(t_end)): our uniform, quadratic and logsnr grids."""
    sde = sd.VPSDE()
    n, t_end = 12, 1e-3
    torch.testing.assert_close(UniformGrid()(sde, n, t_end),
                               torch.linspace(1.0, t_end, n + 1, dtype=torch.float64))
    torch.testing.assert_close(QuadraticGrid()(sde, n, t_end),
                               torch.linspace(1.0, t_end ** 0.5, n + 1, dtype=torch.float64) ** 2)
    lam = sde.log_snr(torch.tensor([1.0, t_end], dtype=torch.float64))
    torch.testing.assert_close(LogSNRGrid()(sde, n, t_end),
                               sde.log_snr_inverse(torch.linspace(float(lam[0]), float(lam[1]), n + 1,
                                                                  dtype=torch.float64)))


# ------------------------------------------------------------------------------------------
# Explicit tensor grids in sd.sample
# ------------------------------------------------------------------------------------------
def _explicit_problem():
    from oracle import random_gm

    gm = random_gm(2, 3, seed=1)
    sde = sd.VPSDE()
    return gm.as_model(sde), sde.prior_sample((8, 2), torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("solver, opts", [("ddim", {}), ("heun", {}), ("dpm_solver", {}),
                                          ("pf_ode", {"method": "rk4"}), ("euler_maruyama", {})])
def test_explicit_grid_equals_named_grid(solver, opts):
    """A tensor grid equal to a named grid gives the same samples, draw for draw."""
    model, x_T = _explicit_problem()
    s = sd.samplers.make_solver(solver, **opts)
    nfe = s.nfe_for_steps(6) + 1
    named = sd.sample(model, solver=solver, nfe=nfe, x_T=x_T, grid="karras",
                      generator=torch.Generator().manual_seed(3), **opts)
    grid = KarrasGrid()(model.sde, 6, model.sde.sample_eps)
    given = sd.sample(model, solver=solver, nfe=nfe, x_T=x_T, grid=grid,
                      generator=torch.Generator().manual_seed(3), **opts)
    assert torch.equal(named.x, given.x) and torch.equal(named.times, given.times)
    assert given.t_end == model.sde.sample_eps and given.times is not grid      # a copy


def test_explicit_grid_may_start_below_T():
    """diffusers' 'leading' spacing and SDEdit start below T: the solve starts at grid[0] from
    x_T (the network is never called above it), as manual stepping on the same grid does."""
    model, x_T = _explicit_problem()
    seen = []
    inner = model.net

    def net(x, t):
        seen.append(float(t.reshape(-1)[0]))
        return inner(x, t)

    rec = sd.ScoreModel(net, model.sde, prediction=model.prediction)
    grid = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1, 0.02], dtype=torch.float64)     # "leading"-like
    for name in ("ddim", "dpm_solver", "heun", "pf_ode"):
        slv = sd.samplers.make_solver(name, **({"method": "rk4"} if name == "pf_ode" else {}))
        seen.clear()
        res = sd.sample(rec, solver=slv, nfe=slv.nfe_for_steps(5) + 1, x_T=x_T, grid=grid)
        assert res.t_end == 0.02 and torch.equal(res.times, grid) and res.nfe == len(seen)
        assert max(seen) == 0.9 and min(seen) == 0.02
        if name == "pf_ode":
            continue
        ctx = slv.start(model, x_T, grid)
        x = x_T
        with torch.no_grad():
            for i in range(5):
                x = slv.step(ctx, x, i)
            x = sd.samplers.tweedie_denoise(model, x, 0.02)
        torch.testing.assert_close(res.x, x, rtol=0, atol=0)
    # a float32 grid is used in float64, and t_end given in agreement with it is accepted
    g32 = torch.tensor([1.0, 0.5, 1e-3], dtype=torch.float32)
    res = sd.sample(model, solver="ddim", nfe=3, x_T=x_T, grid=g32, t_end=1e-3)
    assert res.times.dtype == torch.float64 and res.t_end == float(g32[-1])


def test_explicit_grid_errors():
    model, x_T = _explicit_problem()
    good = torch.tensor([1.0, 0.5, 0.1, 1e-3], dtype=torch.float64)
    with pytest.raises(TypeError, match="floating-point tensor"):
        sd.sample(model, solver="ddim", nfe=4, x_T=x_T, grid=torch.tensor([3, 2, 1]))
    def f64(*ts):
        return torch.tensor(ts, dtype=torch.float64)

    bad_values = [
        (good[None], "1-d"), (good[:1], "at least 2"),
        (f64(1.0, 0.5, 0.5, 1e-3), "strictly decreasing; entries 1 and 2"),
        (f64(1.0, float("nan"), 1e-3), "NaN"),
        (f64(1.5, 0.5, 1e-3), r"\(0, T\]"), (f64(1.0, 0.5, 0.0), r"\(0, T\]"),
    ]
    for grid, match in bad_values:
        with pytest.raises(ValueError, match=match):
            sd.sample(model, solver="ddim", nfe=grid.reshape(-1).shape[0], x_T=x_T, grid=grid)
    with pytest.raises(ValueError, match="t_end=0.01 disagrees with the explicit grid's last time 0.001"):
        sd.sample(model, solver="ddim", nfe=4, x_T=x_T, grid=good, t_end=0.01)
    # the grid's steps must cost exactly the budget: 3 ddim steps + denoising = 4
    with pytest.raises(sd.samplers.BudgetError, match=r"3 steps costs solver 'ddim' 4 evaluations.*nfe=5"):
        sd.sample(model, solver="ddim", nfe=5, x_T=x_T, grid=good)
    with pytest.raises(sd.samplers.BudgetError, match=r"costs solver 'heun' 6 evaluations"):
        sd.sample(model, solver="heun", nfe=4, x_T=x_T, grid=good)
    assert sd.sample(model, solver="ddim", nfe=3, x_T=x_T, grid=good, denoise=False).nfe == 3
    with pytest.raises(ValueError, match="needs the budget it costs, nfe=4"):
        sd.sample(model, solver="ddim", nfe=None, x_T=x_T, grid=good)
    # torchsde integrates from T: a later start is refused, not silently ignored
    with pytest.raises(ValueError, match="starts at T"):
        sd.sample(model, solver="torchsde", nfe=4, x_T=x_T, grid=f64(0.9, 0.5, 0.1, 1e-3))
