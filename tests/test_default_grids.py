"""Budget-aware grid rules (`PerStepsGrid`) and the measured per-SDE, per-budget defaults.

The defaults come from experiments/default_grids.py (docs/results.md, "Default time grid per
solver, SDE and budget"); where a solver's rule changes with the number of steps, the switch
is checked where it was measured: on the calibration target, the rule for few steps beats
the rule for many at the small budget (exact Gaussian-mixture score, float64, pathwise error
against a tight PF-ODE solve from the same draws)."""

import functools

import pytest
import torch
from oracle import gen

import scoresde as sd
from scoresde.evaluation.targets import builtin_target
from scoresde.samplers import (
    KarrasGrid,
    PerSDEGrid,
    PerStepsGrid,
    TimeGrid,
    get_grid,
    grid_error,
    grid_label,
    make_solver,
    solver_table,
)

F64 = torch.float64


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# PerStepsGrid
# ------------------------------------------------------------------------------------------
def test_per_steps_grid_picks_the_rule_by_number_of_steps():
    g = PerStepsGrid({6: "quadratic", 2: KarrasGrid(rho=3.0)}, otherwise="uniform")
    sde = sd.VPSDE()
    assert list(g.rules) == [2, 6]          # sorted whatever the order given
    for n, want in [(1, KarrasGrid(rho=3.0)), (2, KarrasGrid(rho=3.0)), (3, get_grid("quadratic")),
                    (6, get_grid("quadratic")), (7, get_grid("uniform")), (40, get_grid("uniform"))]:
        _same(g(sde, n, 1e-3), want(sde, n, 1e-3))
        assert g.for_steps(n).label == want.label
    assert g.label == "karras(rho=3) up to 2 steps then quadratic up to 6 steps then uniform"
    assert repr(g) == ("PerStepsGrid({2: KarrasGrid(rho=3.0), 6: QuadraticGrid()}, "
                       "otherwise=UniformGrid())")
    assert PerStepsGrid({1: "karras"}, otherwise="uniform").label == "karras up to 1 step then uniform"
    # a plain grid is its own rule for any number of steps, and for any SDE
    plain = get_grid("logsnr")
    assert plain.for_steps(3) is plain and plain.for_sde(sd.VESDE()) is plain
    assert g.for_sde(sd.VESDE()) is g


def test_per_steps_grid_inside_a_per_sde_grid():
    steps = PerStepsGrid({4: "uniform"}, otherwise="karras")
    g = PerSDEGrid({"vp": "quadratic", "ve": steps}, fallback="logsnr")
    vp, ve, sub = sd.VPSDE(), sd.VESDE(), sd.SubVPSDE()
    _same(g(ve, 4, 1e-5), get_grid("uniform")(ve, 4, 1e-5))
    _same(g(ve, 5, 1e-5), get_grid("karras")(ve, 5, 1e-5))
    _same(g(vp, 4, 1e-3), get_grid("quadratic")(vp, 4, 1e-3))
    _same(g(sub, 4, 1e-3), get_grid("logsnr")(sub, 4, 1e-3))
    assert g.label == "vp: quadratic, ve: (uniform up to 4 steps then karras), otherwise logsnr"
    assert grid_label(g, ve) == "uniform up to 4 steps then karras"
    assert [grid_label(g, ve, n) for n in (1, 4, 5)] == ["uniform", "uniform", "karras"]
    assert grid_label(g, vp, 3) == "quadratic" and grid_label("karras", ve, 3) == "karras"
    # the SDE's rule resolves first, then the number of steps
    assert g.for_sde(ve).for_steps(5).label == "karras"


def test_per_steps_grid_rejects_bad_rules():
    with pytest.raises(TypeError, match="mapping of step counts"):
        PerStepsGrid([(3, "uniform")], otherwise="quadratic")
    with pytest.raises(ValueError, match="at least one rule"):
        PerStepsGrid({}, otherwise="quadratic")
    with pytest.raises(ValueError, match=">= 1"):
        PerStepsGrid({0: "uniform"}, otherwise="quadratic")
    for bad in (2.5, True, "3"):
        with pytest.raises(TypeError, match="step count"):
            PerStepsGrid({bad: "uniform"}, otherwise="quadratic")
    with pytest.raises(ValueError, match="unknown time grid"):
        PerStepsGrid({3: "nope"}, otherwise="quadratic")
    with pytest.raises(ValueError, match="unknown time grid"):
        PerStepsGrid({3: "uniform"}, otherwise="nope")
    inner = PerStepsGrid({3: "uniform"}, otherwise="quadratic")
    with pytest.raises(TypeError, match="plain grids"):
        PerStepsGrid({5: inner}, otherwise="quadratic")
    with pytest.raises(TypeError, match="plain grids"):
        PerStepsGrid({5: "uniform"}, otherwise=PerSDEGrid({"vp": "uniform"}, fallback="quadratic"))
    with pytest.raises(ValueError, match="n_steps"):
        inner.for_steps(0)
    with pytest.raises(TypeError, match="n_steps"):
        get_grid("uniform").for_steps(2.0)
    # and a PerSDEGrid still refuses a PerSDEGrid, but takes a PerStepsGrid
    with pytest.raises(TypeError, match="plain grids"):
        PerSDEGrid({"vp": PerSDEGrid({"ve": "karras"}, fallback="uniform")}, fallback="uniform")
    assert isinstance(PerSDEGrid({"vp": inner}, fallback="uniform").rules["vp"], TimeGrid)


def test_sample_follows_the_rule_for_its_number_of_steps():
    """`sample` gives the grid the number of steps it takes, so a solver with a per-steps
    default runs on the rule for that number (the denoising step not counted)."""
    sde = sd.SubVPSDE()
    model = builtin_target("eight_gaussians", sde).model
    x_T = sde.prior_sample((8, 2), gen(0), dtype=F64)
    for nfe, rule in ((10, "uniform"), (12, "uniform"), (13, "quadratic"), (20, "quadratic")):
        a = sd.sample(model, solver="unipc", nfe=nfe, x_T=x_T)
        b = sd.sample(model, solver="unipc", nfe=nfe, x_T=x_T, grid=rule)
        assert torch.equal(a.times, b.times) and torch.equal(a.x, b.x), (nfe, rule)


# ------------------------------------------------------------------------------------------
# The measured defaults
# ------------------------------------------------------------------------------------------
#: (solver, SDE): the rule at the step counts of NFE 10, 15 and 20 (denoising step included)
MEASURED = {
    ("unipc", "subvp"): ("uniform", "quadratic", "quadratic"),
    ("dpm_solver_3m", "subvp"): ("uniform", "logsnr", "logsnr"),
    ("dpm_solver_singlestep", "ve"): ("karras", "uniform", "uniform"),
    ("dpm_solver_3m", "ve"): ("uniform",) * 3,
    ("unipc", "vp"): ("quadratic",) * 3,
    ("deis", "subvp"): ("uniform",) * 3,
    ("pf_ode", "ve"): ("karras",) * 3,
}


def _steps(name: str, nfe: int) -> int:
    slv = make_solver(name)
    return slv.steps_for_nfe(slv.reachable(nfe, extra=1)[-1], extra=1)


@pytest.mark.parametrize("name, sde_name", sorted(MEASURED))
def test_declared_defaults_are_the_measured_ones(name, sde_name):
    sde = sd.get_sde(sde_name)
    default = make_solver(name).default_grid
    got = tuple(grid_label(default, sde, _steps(name, k)) for k in (10, 15, 20))
    assert got == MEASURED[(name, sde_name)]
    # a cosine VP-SDE takes the VP rule, at every number of steps
    if sde_name == "vp":
        assert grid_label(default, sd.VPSDE.cosine(), 5) == grid_label(default, sde, 5)


def test_solver_table_and_pc_name_a_per_steps_default():
    table = {row["name"]: row for row in solver_table()}
    assert table["unipc"]["default_grid"] == make_solver("unipc").default_grid.label
    assert "uniform up to 11 steps then quadratic" in table["unipc"]["default_grid"]
    pc = make_solver("pc", predictor="dpm_solver_singlestep")
    assert grid_label(pc.default_grid, sd.VESDE(), 3) == "karras"


@functools.cache
def _problem(target: str, sde_name: str):
    sde = sd.get_sde(sde_name)
    model = builtin_target(target, sde).model
    x_T = sde.prior_sample((200, builtin_target(target, sde).exact.dim), gen(0), dtype=F64)
    ref = sd.sample(model, solver="pf_ode", nfe=None, x_T=x_T, rtol=1e-9, atol=1e-9).x
    return model, x_T, ref


@pytest.mark.parametrize("name, sde_name, nfe, few, many", [
    ("dpm_solver_singlestep", "ve", 10, "karras", "uniform"),
    ("unipc", "subvp", 10, "uniform", "quadratic"),
    ("dpm_solver_3m", "subvp", 10, "uniform", "logsnr"),
])
def test_the_switch_pays_where_it_was_measured(name, sde_name, nfe, few, many):
    """At the small budget the rule for few steps beats the one for many on both calibration
    targets (what made the default switch; experiments/default_grids.py measured 1.01-2.4x with
    1000 draws)."""
    for target in ("eight_gaussians", "mixture5d"):
        model, x_T, ref = _problem(target, sde_name)
        e_few = grid_error(model, name, nfe, x_T, ref, few)
        e_many = grid_error(model, name, nfe, x_T, ref, many)
        e_default = grid_error(model, name, nfe, x_T, ref, make_solver(name).default_grid)
        assert e_default == e_few
        assert e_few < e_many, (target, e_few, e_many)
