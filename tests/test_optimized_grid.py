"""Optimised time grids (`optimize_grid`) and per-SDE default grids (`PerSDEGrid`).

The optimised grid is checked where it matters: chosen on one set of calibration draws, it beats
every built-in grid on a held-out set of draws (exact Gaussian-mixture score, float64, error
against a tight PF-ODE solve from the same draws)."""

import functools
import json

import pytest
import torch
from oracle import gen

import scoresde as sd
from scoresde.evaluation.targets import builtin_target
from scoresde.samplers import (
    GRIDS,
    KarrasGrid,
    OptimizedGrid,
    PerSDEGrid,
    PolyExponentialGrid,
    get_grid,
    grid_error,
    grid_label,
    make_solver,
    optimize_grid,
    sde_names,
)

F64 = torch.float64
TOL = 1e-7   # the reference solve's rtol = atol: far below the few-step errors (>= 5e-3)


@functools.cache
def _problem(sde_name: str):
    """Model, calibration draws (128, seed 1) and held-out draws (256, seed 2) with the
    held-out reference solve."""
    sde = sd.get_sde(sde_name)
    model = builtin_target("eight_gaussians", sde).model
    calib = sde.prior_sample((128, 2), gen(1), dtype=F64)
    held = sde.prior_sample((256, 2), gen(2), dtype=F64)
    ref = sd.sample(model, solver="pf_ode", nfe=None, x_T=held, rtol=TOL, atol=TOL).x
    return model, calib, held, ref


@pytest.mark.parametrize("sde_name, solver, nfe", [("vp", "dpm_solver", 6), ("ve", "ddim", 6),
                                                    ("subvp", "unipc", 6)])
def test_optimised_grid_beats_every_builtin_grid_on_held_out_draws(sde_name, solver, nfe):
    model, calib, held, ref = _problem(sde_name)
    opt = optimize_grid(model, solver, nfe, x_T=calib, reference_tol=TOL, max_evals=60)
    builtin = {g: grid_error(model, solver, nfe, held, ref, g) for g in GRIDS}
    held_out = grid_error(model, solver, nfe, held, ref, opt)
    # the search never ends worse than where it started, on the calibration draws
    assert opt.calibration_error <= opt.init_error
    assert opt.init in GRIDS
    # and the gain carries over to draws it never saw: at least 20% below the best built-in
    assert held_out < 0.8 * min(builtin.values()), (held_out, builtin)
    # the grid is valid: T ... t_end, strictly decreasing, as many steps as the budget buys
    n = make_solver(solver).steps_for_nfe(nfe, extra=1)
    assert opt.times.shape == (n + 1,) and opt.times.dtype == F64
    assert float(opt.times[0]) == model.sde.T and float(opt.times[-1]) == model.sde.sample_eps
    assert bool((opt.times[1:] < opt.times[:-1]).all())
    # the cost is reported: the reference solve plus n_evals runs of nfe evaluations
    assert opt.n_evals > 1 and opt.cost_nfe > opt.n_evals * nfe and opt.seconds > 0
    assert opt.n_calib == 128


def test_optimised_grid_is_a_grid_for_sample():
    model, calib, held, _ = _problem("vp")
    opt = optimize_grid(model, "ddim", 4, x_T=calib, reference_tol=TOL, max_evals=30)
    a = sd.sample(model, solver="ddim", nfe=4, x_T=held, grid=opt)
    b = sd.sample(model, solver="ddim", nfe=4, x_T=held, grid=opt.times)
    assert torch.equal(a.x, b.x) and torch.equal(a.times, opt.times)
    with pytest.raises(ValueError, match="3 steps"):
        sd.sample(model, solver="ddim", nfe=6, x_T=held, grid=opt)
    with pytest.raises(ValueError, match="optimised for the SDE"):
        sd.sample(builtin_target("eight_gaussians", sd.VESDE()).model, solver="ddim", nfe=4,
                  x_T=held, grid=opt)
    assert opt.label == "optimized(DDIM(eta=0.0), nfe=4)"


def test_cache_save_and_load(tmp_path):
    model, calib, _, _ = _problem("vp")
    kw = dict(x_T=calib, reference_tol=TOL, max_evals=20, cache_dir=tmp_path)
    opt = optimize_grid(model, "dpm_solver", 5, fingerprint="eight_gaussians", **kw)
    files = list(tmp_path.glob("grid-*.json"))
    assert len(files) == 1 and opt.key in files[0].name
    # the second call reads the cache: no network evaluation at all, the same times exactly
    before = model.n_evals
    again = optimize_grid(model, "dpm_solver", 5, fingerprint="eight_gaussians", **kw)
    assert model.n_evals == before
    assert torch.equal(again.times, opt.times) and again.to_dict() == opt.to_dict()
    # another model (fingerprint), budget or calibration set is another entry
    optimize_grid(model, "dpm_solver", 5, fingerprint="another model", **kw)
    optimize_grid(model, "dpm_solver", 5, fingerprint="eight_gaussians",
                  **{**kw, "x_T": calib[:64]})
    assert len(list(tmp_path.glob("grid-*.json"))) == 3
    # save / load round-trips every float exactly (JSON float64)
    path = opt.save(tmp_path / "mine.json")
    loaded = OptimizedGrid.load(path)
    assert torch.equal(loaded.times, opt.times) and loaded.to_dict() == opt.to_dict()
    assert json.loads(path.read_text())["fingerprint"] == "eight_gaussians"
    with pytest.raises(ValueError, match="fingerprint"):
        optimize_grid(model, "dpm_solver", 5, x_T=calib, cache_dir=tmp_path)


def test_optimize_grid_arguments():
    model, calib, _, _ = _problem("vp")
    with pytest.raises(ValueError, match="deterministic"):
        optimize_grid(model, "euler_maruyama", 5, x_T=calib)
    with pytest.raises(ValueError, match="deterministic"):
        optimize_grid(model, "ddim", 5, x_T=calib, eta=1.0)
    with pytest.raises(sd.BudgetError):
        optimize_grid(model, "heun", 5, x_T=calib)
    with pytest.raises(ValueError, match="shape"):
        optimize_grid(model, "ddim", 5)
    with pytest.raises(TypeError, match="fingerprint"):
        optimize_grid(model, "ddim", 5, x_T=calib, fingerprint=3)
    # one step has no interior time to move: the grid is [T, t_end], every rule's (tried once)
    one = optimize_grid(model, "ddim", 2, x_T=calib[:8], reference_tol=TOL)
    assert one.times.tolist() == [1.0, 1e-3] and one.n_evals == 1
    # an explicit start is kept when nothing beats it within the budget of evaluations
    start = get_grid("quadratic")(model.sde, 4, 1e-3)
    opt = optimize_grid(model, "ddim", 5, x_T=calib[:8], reference_tol=TOL, init=start, max_evals=1)
    assert opt.init == "explicit" and opt.calibration_error <= opt.init_error


# ------------------------------------------------------------------------------------------
# Per-SDE grids and the solvers' measured defaults
# ------------------------------------------------------------------------------------------
def test_per_sde_grid_dispatch():
    g = PerSDEGrid({"vp": "quadratic", "ve": KarrasGrid()}, fallback="uniform")
    vp, cos, sub, ve = sd.VPSDE(), sd.VPSDE.cosine(), sd.SubVPSDE(), sd.VESDE()
    assert sde_names(cos) == ["vp_cosine", "vp"] and sde_names(vp) == ["vp"]
    torch.testing.assert_close(g(vp, 7, 1e-3), get_grid("quadratic")(vp, 7, 1e-3), rtol=0, atol=0)
    torch.testing.assert_close(g(ve, 7, 1e-5), KarrasGrid()(ve, 7, 1e-5), rtol=0, atol=0)
    torch.testing.assert_close(g(sub, 7, 1e-3), get_grid("uniform")(sub, 7, 1e-3), rtol=0, atol=0)
    # a cosine VP-SDE has no rule of its own: it takes its registered base class's ("vp")
    assert grid_label(g, cos) == "quadratic" and grid_label(g, sub) == "uniform"
    assert grid_label("karras", ve) == "karras"
    assert grid_label(PolyExponentialGrid(2.0), ve) == "polyexponential(rho=2)"
    assert g.label == "vp: quadratic, ve: karras, otherwise uniform"
    with pytest.raises(ValueError, match="unknown SDE"):
        PerSDEGrid({"vq": "uniform"}, fallback="uniform")
    with pytest.raises(ValueError, match="unknown time grid"):
        PerSDEGrid({"vp": "nope"}, fallback="uniform")
    with pytest.raises(TypeError, match="plain grids"):
        PerSDEGrid({"vp": g}, fallback="uniform")


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_sample_uses_the_solvers_default_for_the_sde(sde_name):
    """With no grid, every fixed-grid solver runs on its default rule for that SDE."""
    sde = sd.get_sde(sde_name)
    model = builtin_target("eight_gaussians", sde).model
    x_T = sde.prior_sample((4, 2), gen(0), dtype=F64)
    for name in ("ddim", "dpm_solver", "unipc", "heun", "deis"):
        slv = make_solver(name)
        nfe = slv.nfe_for_steps(5) + 1
        a = sd.sample(model, solver=name, nfe=nfe, x_T=x_T)
        b = sd.sample(model, solver=name, nfe=nfe, x_T=x_T, grid=get_grid(slv.default_grid).for_sde(sde))
        assert torch.equal(a.times, b.times) and torch.equal(a.x, b.x), name
