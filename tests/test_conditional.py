"""Conditional generation against exact answers: the Gaussian-mixture oracle's
class-conditional scores and exact conditionals (`component`, `condition`,
`as_conditional_model`), conditioning and callbacks through every solver, classifier-free and
classifier guidance (closed forms, NFE charged double), and inpainting (replacement, RePaint,
DPS): exactness where it holds, measured bias where it does not, and clear errors."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from oracle import ExactStatistics, gen, random_gm

import scoresde as sd
from scoresde.analytic import GaussianMixture
from scoresde.evaluation.compare import compare
from scoresde.evaluation.metrics import sliced_wasserstein
from scoresde.evaluation.targets import Target
from scoresde.inpaint import METHODS
from scoresde.samplers import SOLVERS, BudgetError, FixedGridSolver, make_solver

F64 = torch.float64
Z_OK = 5.0

# one representative option set per registered solver (fixed grid unless "adaptive")
SOLVER_CASES = [
    ("euler_maruyama", {}), ("ancestral", {}), ("ddim", {"eta": 0.5}), ("heun", {}),
    ("heun", {"churn": 10.0}), ("dpm_solver", {}), ("pc", {}), ("pf_ode", {"method": "rk4"}),
    ("torchsde", {"method": "euler"}), ("unipc", {}), ("dpm_solver_3m", {}),
    ("dpm_solver_sde", {}), ("dpm_solver_singlestep", {}), ("deis", {}), ("ipndm", {}),
    ("ggf", {}), ("sa_solver", {}),
]
ADAPTIVE_CASES = [("pf_ode", {"rtol": 1e-4, "atol": 1e-4}), ("torchsde", {"rtol": 1e-2, "atol": 1e-2}),
                  ("ggf", {"rtol": 0.1, "atol": 0.01})]
FIXED_CASES = [(n, o) for n, o in SOLVER_CASES if isinstance(make_solver(n, **o), FixedGridSolver)]


def _ids(cases):
    return [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}".rstrip("-") for n, o in cases]


def _budget(name: str, opts: dict, steps: int, denoise: bool = True) -> int:
    return make_solver(name, **opts).nfe_for_steps(steps) + int(denoise)


@functools.cache
def _problem():
    """A 2-D, 3-component mixture (sharp modes) and its exact class-conditional model."""
    gm = random_gm(2, 3, seed=0)
    sde = sd.VPSDE()
    return gm, sde, gm.as_conditional_model(sde)


def test_builtin_solver_cases_are_complete():
    builtin = {n for n, cls in SOLVERS.items() if cls.__module__.startswith("scoresde.")}
    assert builtin == {n for n, _ in SOLVER_CASES}


# ------------------------------------------------------------------------------------------
# The oracle: components, exact conditionals, the class-conditional score
# ------------------------------------------------------------------------------------------
def test_component_is_the_kth_gaussian():
    gm = random_gm(3, 3, seed=2)
    x = torch.randn(5, 3, generator=gen(0), dtype=F64)
    for k in range(3):
        c = gm.component(k)
        assert c.n_components == 1 and c.event_shape == gm.event_shape
        d = torch.distributions.MultivariateNormal(gm.means[k], gm.covs[k])
        torch.testing.assert_close(c.log_prob(x), d.log_prob(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="outside the components"):
        gm.component(3)
    with pytest.raises(TypeError):
        gm.component(1.0)


def _brute_force_conditional(gm: GaussianMixture, x0: float, grid: torch.Tensor):
    """p(x1 | x0) and p(component k | x0) by evaluating the joint densities on a fine grid
    of x1 and integrating numerically (trapezoid)."""
    pts = torch.stack([torch.full_like(grid, x0), grid], 1)
    joint = gm.log_prob(pts).exp()
    z = torch.trapezoid(joint, grid)
    per = torch.stack([gm.weights[k] * gm.component(k).log_prob(pts).exp() for k in range(3)])
    return joint / z, torch.trapezoid(per, grid) / z


@pytest.mark.parametrize("x0", [-1.0, 0.3, 1.7])
def test_condition_matches_brute_force_numerical_conditioning(x0):
    gm = random_gm(2, 3, seed=0)
    grid = torch.linspace(-12, 12, 48_001, dtype=F64)
    dens, weights = _brute_force_conditional(gm, x0, grid)
    cond = gm.condition(torch.tensor([True, False]), torch.tensor([x0, float("nan")]))
    assert cond.dim == 1 and cond.n_components == 3
    torch.testing.assert_close(cond.weights, weights, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(cond.log_prob(grid[:, None]).exp(), dens, rtol=1e-6, atol=1e-10)
    # the same observation given as the observed values alone
    same = gm.condition(torch.tensor([True, False]), torch.tensor([x0]))
    torch.testing.assert_close(same.means, cond.means, rtol=0, atol=0)


def test_condition_on_several_coordinates_and_image_shapes():
    """5-D, two observed coordinates: per-component Gaussian conditioning (checked against
    the precision-matrix form) and weights against the marginal densities; the same mixture
    with an image event shape gives the same conditional."""
    gm = random_gm(5, 3, seed=3)
    mask = torch.tensor([False, True, False, True, False])
    x = gm.sample(1, gen(1), dtype=F64)[0]
    cond = gm.condition(mask, x)
    o, u = mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)
    logw = []
    for k in range(3):
        prec = torch.linalg.inv(gm.covs[k])
        cov_k = torch.linalg.inv(prec[u][:, u])            # Sigma_u|o = (P_uu)^-1
        mu_k = gm.means[k, u] - cov_k @ prec[u][:, o] @ (x[o] - gm.means[k, o])
        torch.testing.assert_close(cond.covs[k], cov_k, rtol=0, atol=1e-10)
        torch.testing.assert_close(cond.means[k], mu_k, rtol=0, atol=1e-10)
        marg = torch.distributions.MultivariateNormal(gm.means[k, o], gm.covs[k][o][:, o])
        logw.append(gm.weights[k].log() + marg.log_prob(x[o]))
    torch.testing.assert_close(cond.weights, torch.softmax(torch.stack(logw), 0), rtol=1e-10, atol=1e-15)
    img = GaussianMixture(gm.weights, gm.means, gm.covs, event_shape=(1, 5, 1))
    c2 = img.condition(mask.reshape(1, 5, 1), x.reshape(1, 5, 1))
    torch.testing.assert_close(c2.means, cond.means, rtol=0, atol=0)


def test_condition_errors():
    gm = random_gm(3, 2, seed=0)
    x = torch.zeros(3, dtype=F64)
    with pytest.raises(TypeError, match="bool"):
        gm.condition(torch.tensor([1, 0, 0]), x)
    with pytest.raises(ValueError, match="event shape"):
        gm.condition(torch.tensor([True, False]), x)
    with pytest.raises(ValueError, match="at least one observed"):
        gm.condition(torch.ones(3, dtype=torch.bool), x)
    with pytest.raises(ValueError, match="x_obs"):
        gm.condition(torch.tensor([True, False, False]), torch.zeros(2, dtype=F64))
    deg = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="singular"):
        deg.condition(torch.tensor([True, False]), torch.zeros(2))


def test_conditional_score_per_label_and_null():
    gm, sde, model = _problem()
    k = gm.n_components
    assert model.net.null_label == k and model.net.num_classes == k
    x = torch.randn(8, 2, generator=gen(0), dtype=F64)
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    s = model.score(x, 0.3, y=y)
    for i, lab in enumerate(y.tolist()):
        want = (gm.score(x[i:i + 1], 0.3, sde) if lab == k
                else gm.component(lab).score(x[i:i + 1], 0.3, sde))
        torch.testing.assert_close(s[i:i + 1], want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.score(x, 0.3), gm.score(x, 0.3, sde), rtol=0, atol=0)


def test_labels_outside_range_or_of_wrong_type_are_clear_errors():
    _, sde, model = _problem()
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"0\.\.2, or be 3"):
        model.score(x, 0.5, y=torch.tensor([0, 1, 4, 0]))
    with pytest.raises(ValueError, match=r"0\.\.2"):
        model.score(x, 0.5, y=torch.tensor([0, -1, 0, 0]))
    with pytest.raises(TypeError, match="integer tensor"):
        model.score(x, 0.5, y=torch.zeros(4))
    with pytest.raises(ValueError, match="class labels"):
        sd.sample(model, (4, 2), nfe=5, generator=gen(0), cond={"y": torch.full((4,), 7)})


# ------------------------------------------------------------------------------------------
# Conditioning through the stack
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, opts", SOLVER_CASES + ADAPTIVE_CASES,
                         ids=_ids(SOLVER_CASES) + [i + "-adaptive" for i in _ids(ADAPTIVE_CASES)])
def test_cond_reaches_every_network_call(name, opts):
    """Sampling the conditional oracle with y = 1 everywhere is sampling component 1's exact
    model, draw for draw, with every solver (adaptive ones too): cond reaches every call."""
    gm, sde, model = _problem()
    x_T = sde.prior_sample((16, 2), gen(0), dtype=F64)
    nfe = None if "rtol" in opts else _budget(name, opts, 6)
    kw = dict(solver=name, nfe=nfe, x_T=x_T, **opts)
    a = sd.sample(model, generator=gen(1), cond={"y": torch.ones(16, dtype=torch.long)}, **kw)
    b = sd.sample(gm.component(1).as_model(sde), generator=gen(1), **kw)
    assert a.nfe == b.nfe
    torch.testing.assert_close(a.x, b.x, rtol=1e-8, atol=1e-8)


def test_sampling_the_exact_conditional_oracle_recovers_the_exact_conditionals():
    """z-scores (tests/oracle.py) of class-conditional samples against the exact component,
    of null-label samples against the mixture, and of samples of `condition(...)`'s exact
    conditional model against that conditional mixture."""
    gm, sde, model = _problem()
    n = 4000
    y = torch.arange(n) % 4                                 # labels 0, 1, 2 and the null 3
    res = sd.sample(model, (n, 2), solver="euler_maruyama", nfe=201, generator=gen(2),
                    cond={"y": y})
    res.x = res.x.to(F64)
    for k in range(3):
        z = ExactStatistics(gm.component(k), n_exact=50_000).max_abs_z(res.x[y == k])
        assert z < Z_OK, (k, z)
    assert ExactStatistics(gm, n_exact=50_000).max_abs_z(res.x[y == 3]) < Z_OK
    # the wrong component is detected
    assert ExactStatistics(gm.component(0), n_exact=50_000).max_abs_z(res.x[y == 1]) > 10 * Z_OK
    cond = gm.condition(torch.tensor([True, False]), torch.tensor([0.3, 0.0]))
    x = sd.sample(cond.as_model(sde), (4000, 1), nfe=201, generator=gen(3)).x.to(F64)
    assert ExactStatistics(cond, n_exact=50_000).max_abs_z(x) < Z_OK


def test_bad_cond_is_a_clear_error():
    _, _, model = _problem()
    with pytest.raises(TypeError, match="dict of conditioning"):
        sd.sample(model, (4, 2), nfe=5, cond=torch.zeros(4))
    with pytest.raises(ValueError, match="batch size B=4"):
        sd.sample(model, (4, 2), nfe=5, cond={"y": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(TypeError, match="must be a tensor"):
        sd.sample(model, (4, 2), nfe=5, cond={"y": 1})


# ------------------------------------------------------------------------------------------
# The step callback
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, opts", FIXED_CASES + [("pf_ode", {"method": "midpoint"})],
                         ids=_ids(FIXED_CASES) + ["pf_ode-midpoint"])
def test_callback_sees_every_grid_time_once_in_order(name, opts):
    _, sde, model = _problem()
    seen = []

    def cb(i, t, x):
        seen.append((i, t, x.clone()))

    x_T = sde.prior_sample((8, 2), gen(0), dtype=F64)
    kw = dict(solver=name, nfe=_budget(name, opts, 5), x_T=x_T, trajectory=True, **opts)
    res = sd.sample(model, generator=gen(1), callback=cb, **kw)
    assert [i for i, _, _ in seen] == list(range(5))
    assert [t for _, t, _ in seen] == res.times[1:].tolist()
    for i, _, x in seen:
        assert torch.equal(x, res.trajectory[i + 1])
    # a callback that returns nothing changes nothing
    plain = sd.sample(model, generator=gen(1), **kw)
    torch.testing.assert_close(plain.x, res.x, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["euler_maruyama", "ddim", "dpm_solver", "pf_ode"])
def test_a_returned_state_replaces_x(name):
    _, sde, model = _problem()
    x_T = sde.prior_sample((8, 2), gen(0), dtype=F64)
    opts = {"method": "euler"} if name == "pf_ode" else {}
    kw = dict(solver=name, nfe=_budget(name, opts, 4, denoise=False), x_T=x_T, denoise=False,
              trajectory=True, **opts)
    shift = torch.tensor([0.5, -0.25], dtype=F64)
    res = sd.sample(model, generator=gen(1), callback=lambda i, t, x: x + shift if i == 1 else None, **kw)
    plain = sd.sample(model, generator=gen(1), **kw)
    torch.testing.assert_close(res.trajectory[:2], plain.trajectory[:2], rtol=0, atol=1e-13)
    # step 2 starts from the shifted state: compare with running the tail by hand
    solver = make_solver(name, **opts)
    tail = sd.sample(model, solver=solver, x_T=plain.trajectory[2] + shift, grid=res.times[2:],
                     nfe=_budget(name, opts, 2, denoise=False), denoise=False, generator=gen(7))
    torch.testing.assert_close(res.trajectory[2], plain.trajectory[2] + shift, rtol=0, atol=0)
    if name in ("ddim", "pf_ode"):        # deterministic and one-step: the tail is the same solve
        torch.testing.assert_close(res.x, tail.x, rtol=0, atol=1e-12)
    assert not torch.allclose(res.x, plain.x)


def test_callback_errors():
    _, sde, model = _problem()
    with pytest.raises(ValueError, match="fixed grid"):
        sd.sample(model, (4, 2), solver="pf_ode", nfe=None, callback=lambda i, t, x: None)
    with pytest.raises(ValueError, match="no callback"):
        sd.sample(model, (4, 2), solver="torchsde", nfe=11, callback=lambda i, t, x: None)
    with pytest.raises(ValueError, match="returned a"):
        sd.sample(model, (4, 2), nfe=5, callback=lambda i, t, x: x[:2])
    with pytest.raises(TypeError, match="tensor or None"):
        sd.sample(model, (4, 2), nfe=5, callback=lambda i, t, x: 1.0)
    with pytest.raises(TypeError, match="callable"):
        sd.sample(model, (4, 2), nfe=5, callback=3)


# ------------------------------------------------------------------------------------------
# Guidance
# ------------------------------------------------------------------------------------------
def _as_prediction(model: sd.ScoreModel, prediction: str) -> sd.ScoreModel:
    """The same exact conditional model, its network predicting `prediction`."""
    sde = model.sde

    def net(x, t, y=None):
        c = sde.coefficients(t)
        a = c.alpha.reshape(-1, 1)
        s = c.sigma.reshape(-1, 1)
        return model.evaluate(x, t, a, s, prediction, y=y)

    return sd.ScoreModel(net, sde, prediction=prediction)


@pytest.mark.parametrize("prediction", ["eps", "score", "x0", "v"])
def test_cfg_is_the_one_plus_w_weighting_of_eps_in_closed_form(prediction):
    gm, sde, oracle = _problem()
    model = _as_prediction(oracle, prediction)
    x = torch.randn(6, 2, generator=gen(0), dtype=F64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for t in (0.05, 0.4, 0.9):
        sigma = float(sde.sigma(torch.tensor(t, dtype=F64)))
        eps_c = torch.cat([-sigma * gm.component(k).score(x[i:i + 1], t, sde)
                           for i, k in enumerate(y.tolist())])
        eps_u = -sigma * gm.score(x, t, sde)
        for w in (-1.0, 0.0, 0.5, 3.0):
            guided = sd.guidance(model, w, {"y": 3})
            torch.testing.assert_close(guided.eps(x, t, y=y), (1 + w) * eps_c - w * eps_u,
                                       rtol=1e-9, atol=1e-9)
            # the other convention: eps_null + s (eps_c - eps_null) with s = 1 + w
            s = 1 + w
            torch.testing.assert_close(guided.eps(x, t, y=y), eps_u + s * (eps_c - eps_u),
                                       rtol=1e-9, atol=1e-9)


def test_cfg_w0_is_conditional_sampling_draw_for_draw_and_counts_two_per_call():
    _, sde, model = _problem()
    guided = sd.guidance(model, 0.0, {"y": model.net.null_label})
    assert guided.evals_per_call == 2 and model.evals_per_call == 1
    y = torch.arange(32) % 3
    x_T = sde.prior_sample((32, 2), gen(0), dtype=F64)
    for name, opts, steps in [("euler_maruyama", {}, 10), ("dpm_solver", {}, 8), ("heun", {}, 5)]:
        nfe = _budget(name, opts, steps)
        a = sd.sample(model, solver=name, nfe=nfe, x_T=x_T, generator=gen(1), cond={"y": y}, **opts)
        n0, b0 = guided.n_evals, model.n_evals
        b = sd.sample(guided, solver=name, nfe=2 * nfe, x_T=x_T, generator=gen(1), cond={"y": y},
                      **opts)
        assert b.nfe == 2 * a.nfe == guided.n_evals - n0
        assert model.n_evals - b0 == nfe            # the network ran nfe times, on 2B rows
        assert torch.equal(a.times, b.times)
        torch.testing.assert_close(b.x, a.x, rtol=0, atol=1e-14)
    with pytest.raises(BudgetError, match=r"2 evaluations per call.*\[16, 18, 20, 22, 24, 26\]"):
        sd.sample(guided, (4, 2), nfe=21, cond={"y": y[:4]})
    # adaptive solves and the likelihood count 2 per call too
    a = sd.sample(guided, solver="pf_ode", nfe=None, x_T=x_T, cond={"y": y}, rtol=1e-4, atol=1e-4)
    assert a.nfe % 2 == 0 and a.nfe > 10


def test_guided_likelihood_counts_double_and_at_w0_is_the_conditional_one():
    gm, sde, model = _problem()
    x = gm.component(2).sample(4, gen(0), dtype=F64)
    guided = sd.guidance(model, 0.0, {"y": 3}, cond={"y": 2})
    a = sd.log_likelihood(guided, x, rtol=1e-6, atol=1e-6)
    b = sd.log_likelihood(gm.component(2).as_model(sde), x, rtol=1e-6, atol=1e-6)
    assert a.nfe == 2 * b.nfe
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=1e-9)
    # the exact density of component 2 (the PF-ODE of an exact score is exact, once the
    # prior N(0, I) is replaced by the exact marginal at T, as in tests/test_likelihood.py)
    c2 = gm.component(2)
    exact_prior = a.logp - a.prior_logp + c2.marginal_log_prob(a.z, sde.T, sde)
    torch.testing.assert_close(exact_prior, c2.marginal_log_prob(x, a.t_eps, sde), rtol=0, atol=1e-4)


def test_compare_charges_a_guided_model_double():
    gm, sde, model = _problem()
    comp = gm.component(0)
    target = Target("cfg", sd.guidance(model, 0.0, {"y": 3}, cond={"y": 0}),
                    lambda n, g: comp.sample(n, g), exact=comp)
    res = compare(target, ["ddim"], [11, 4], n=200, replicates=2, floor_repeats=2,
                  progress=False, pathwise=False, command="test")
    rows = {r["budget"]: r for r in res.rows}
    assert rows[11]["nfe"] == 10 and rows[11]["status"] == "ok"     # 2 x (4 steps + 1)
    assert rows[4]["nfe"] == 4                                      # 2 x (1 step + 1)


def test_classifier_guidance_with_the_exact_classifier():
    """With the exact classifier log p_t(y|x) = log w_y N_y,t(x) - log p_t(x), classifier
    guidance of the mixture with scale 1 + w is CFG of the conditional oracle with weight w
    (the implicit classifier is the exact one), and scale 1 gives the component's score."""
    gm, sde, model = _problem()
    uncond = gm.as_model(sde)

    def log_prob(x, t, y):
        lj = torch.stack([gm.weights[k].log() + gm.component(k).marginal_log_prob(x, t, sde)
                          for k in range(3)], 1)
        return lj.gather(1, y[:, None]).squeeze(1) - gm.marginal_log_prob(x, t, sde)

    x = torch.randn(6, 2, generator=gen(0), dtype=F64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    for w in (0.0, 2.0):
        cg = sd.classifier_guidance(uncond, log_prob, 1.0 + w)
        cfg = sd.guidance(model, w, {"y": 3})
        with torch.no_grad():
            torch.testing.assert_close(cg.score(x, 0.3, y=y), cfg.score(x, 0.3, y=y),
                                       rtol=1e-8, atol=1e-8)
    assert cg.classifier_grads == 1 and cg.evals_per_call == 1
    res = sd.sample(sd.classifier_guidance(uncond, log_prob, 1.0), (2000, 2), nfe=101,
                    generator=gen(4), cond={"y": torch.ones(2000, dtype=torch.long)})
    assert ExactStatistics(gm.component(1), n_exact=50_000).max_abs_z(res.x.to(F64)) < Z_OK


def test_guidance_errors():
    _, _, model = _problem()
    with pytest.raises(TypeError, match="dict"):
        sd.guidance(model, 1.0, 3)
    with pytest.raises(ValueError, match="empty"):
        sd.guidance(model, 1.0, {})
    with pytest.raises(ValueError, match="finite"):
        sd.guidance(model, math.inf, {"y": 3})
    with pytest.raises(TypeError, match="ScoreModel"):
        sd.guidance(lambda x, t: x, 1.0, {"y": 3})
    with pytest.raises(ValueError, match="needs the conditioning"):
        sd.sample(sd.guidance(model, 1.0, {"y": 3}), (4, 2), nfe=6)
    with pytest.raises(TypeError, match="callable"):
        sd.classifier_guidance(model, 3, 1.0)


# ------------------------------------------------------------------------------------------
# Inpainting / imputation
# ------------------------------------------------------------------------------------------
@functools.cache
def _imputation(n: int = 2000):
    """The 2-D mixture with coordinate 0 observed at a value where the exact conditional is
    sharply bimodal-free but replacement visibly misses it; exact conditional samples."""
    gm, sde, _ = _problem()
    x_o = gm.sample(1, gen(5), dtype=F64)
    mask = torch.tensor([True, False])
    cond = gm.condition(mask, x_o[0])
    exact = cond.sample(20_000, gen(9), dtype=F64)
    return gm, sde, x_o.expand(n, 2).clone(), mask, cond, exact


def _w2(x: torch.Tensor, exact: torch.Tensor) -> float:
    """W2 of the imputed coordinate to exact conditional samples (1-D: one direction is exact)."""
    return float(sliced_wasserstein(x[:, 1:], exact, n_projections=1, generator=gen(0)))


@pytest.mark.parametrize("method", METHODS)
def test_inpaint_keeps_known_coordinates_and_counts_nfe(method):
    gm, sde, xk, mask, _, _ = _imputation()
    model = gm.as_model(sde)
    xk = xk[:64].clone()
    xk[:, 1] = float("nan")                         # unknown entries are never read
    kw = {"resample": 3, "jump_length": 2} if method == "repaint" else {}
    nfe = 3 * 10 + 1 if method == "repaint" else 11
    n0 = model.n_evals
    res = sd.inpaint(model, xk, mask, nfe=nfe, method=method, generator=gen(0), **kw)
    assert res.nfe == nfe == model.n_evals - n0
    assert torch.equal(res.x[:, 0], xk[:, 0]) and bool(torch.isfinite(res.x).all())
    assert res.n_vjp == (10 if method == "dps" else 0)


def test_repaint_without_resampling_is_replacement_draw_for_draw():
    gm, sde, xk, mask, _, _ = _imputation()
    model = gm.as_model(sde)
    for solver in ("euler_maruyama", "dpm_solver"):
        a = sd.inpaint(model, xk[:64], mask, solver=solver, nfe=21, generator=gen(3))
        b = sd.inpaint(model, xk[:64], mask, solver=solver, nfe=21, method="repaint", generator=gen(3))
        assert torch.equal(a.x, b.x) and torch.equal(a.times, b.times)


def test_replacement_is_biased_and_repaint_resampling_reduces_the_bias():
    """On 20 grid steps, sliced W2 (= W2 in 1-D) of the imputed coordinate to exact
    conditional samples: replacement is far from the exact conditional, and each
    doubling of RePaint's resampling brings it closer (measured: 0.97, 0.79, 0.59, 0.41;
    noise floor ~0.06)."""
    gm, sde, xk, mask, cond, exact = _imputation()
    model = gm.as_model(sde)
    floor = _w2(torch.cat([xk[:, :1], cond.sample(2000, gen(11), dtype=F64)], 1), exact)
    w2 = []
    for r in (1, 2, 4, 8):
        res = sd.inpaint(model, xk, mask, nfe=20 * r + 1, method="repaint", resample=r,
                         generator=gen(1))
        w2.append(_w2(res.x, exact))
    assert w2[0] > 10 * floor
    assert all(b < a - 0.1 for a, b in zip(w2, w2[1:], strict=False)), w2


def test_dps_with_zero_step_is_joint_sampling():
    gm, sde, xk, mask, _, _ = _imputation()
    model = gm.as_model(sde)
    x_T = sde.prior_sample((64, 2), gen(0), dtype=F64)
    a = sd.inpaint(model, xk[:64], mask, nfe=11, method="dps", zeta=0.0, x_T=x_T, generator=gen(1))
    b = sd.sample(model, nfe=11, x_T=x_T, generator=gen(1))
    assert torch.equal(a.x[:, 1], b.x[:, 1])


def test_inpaint_errors():
    gm, sde, xk, mask, _, _ = _imputation()
    model = gm.as_model(sde)
    xk = xk[:4]
    with pytest.raises(TypeError, match="bool tensor"):
        sd.inpaint(model, xk, mask.float(), nfe=5)
    with pytest.raises(TypeError, match="bool tensor"):
        sd.inpaint(model, xk, [True, False], nfe=5)
    with pytest.raises(ValueError, match="does not broadcast"):
        sd.inpaint(model, xk, torch.tensor([True, False, True]), nfe=5)
    with pytest.raises(ValueError, match="does not broadcast"):
        sd.inpaint(model, xk, torch.ones(8, 2, dtype=torch.bool), nfe=5)
    with pytest.raises(ValueError, match="method must be one of"):
        sd.inpaint(model, xk, mask, nfe=5, method="magic")
    with pytest.raises(ValueError, match="RePaint's"):
        sd.inpaint(model, xk, mask, nfe=5, resample=2)
    with pytest.raises(ValueError, match="DPS's"):
        sd.inpaint(model, xk, mask, nfe=5, zeta=0.5)
    with pytest.raises(BudgetError, match=r"nearest budgets it can meet are \[13, 16, 19, 22, 25, 28\]"):
        sd.inpaint(model, xk, mask, nfe=20, method="repaint", resample=3)
    with pytest.raises(ValueError, match="fixed-grid"):
        sd.inpaint(model, xk, mask, nfe=11, method="repaint", solver="torchsde")
    with pytest.raises(ValueError, match="finite where mask"):
        sd.inpaint(model, torch.full_like(xk, float("nan")), mask, nfe=5)
    with pytest.raises(ValueError, match="no callback"):
        sd.inpaint(model, xk, mask, nfe=11, solver="torchsde")


def test_cli_sample_class(tmp_path, capsys, monkeypatch):
    import numpy as np

    from scoresde import cli

    gm, sde, model = _problem()
    monkeypatch.setattr(sd, "load_model", lambda path: model)
    monkeypatch.setattr(sd, "load_checkpoint", lambda path: {"meta": {"event_shape": [2]}})
    argv = ["sample", "--checkpoint", "x.pt", "--num-samples", "400", "--nfe", "51", "--solver", "ddim",
            "--out", str(tmp_path / "s"), "--no-progress"]
    assert cli.main(argv + ["--class", "2"]) == 0
    z = np.load(tmp_path / "s" / "samples.npz")
    assert int(z["label"]) == 2
    assert ExactStatistics(gm.component(2), n_exact=20_000).max_abs_z(torch.from_numpy(z["x"]).to(F64)) < Z_OK
    capsys.readouterr()
    assert cli.main(argv + ["--class", "3", "--overwrite"]) == 2
    assert "outside the network's classes 0..2" in capsys.readouterr().err
    monkeypatch.setattr(sd, "load_model", lambda path: gm.as_model(sde))
    assert cli.main(argv + ["--class", "0", "--overwrite"]) == 2
    assert "class-conditional" in capsys.readouterr().err
