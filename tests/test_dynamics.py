"""scoresde.dynamics: the reverse drift, the PF-ODE field and its divergence, Tweedie; and the
seams around them (public coefficients, the model's fast path, subclasses and hooks)."""

import pytest
import torch
from oracle import SDE_FACTORIES, gen, make_sde, random_gm

import scoresde as sd
from scoresde.dynamics import (
    ProbabilityFlow,
    ProbabilityFlowWithDivergence,
    drift_from_score,
    reverse_drift,
    tweedie_denoise,
)

NAMES = list(SDE_FACTORIES)


@pytest.mark.parametrize("name", NAMES)
def test_coefficients_equal_the_checked_methods(name):
    sde = make_sde(name)
    t = torch.linspace(0.0, 1.0, 23, dtype=torch.float64)
    c = sde.coefficients(t)
    assert isinstance(c, sd.Coefficients) and all(v.shape == t.shape for v in c)
    torch.testing.assert_close(c.alpha, sde.alpha(t), rtol=0, atol=0)
    torch.testing.assert_close(c.sigma, sde.sigma(t), rtol=0, atol=0)
    torch.testing.assert_close(c.g2, sde.diffusion(t) ** 2, rtol=1e-14, atol=0)
    torch.testing.assert_close(c.f, sde.drift(torch.ones(23, 1, dtype=torch.float64), t)[:, 0],
                               rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_reverse_drift_formulas(name):
    sde = make_sde(name)
    g = gen(0)
    x = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    s = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.rand(5, generator=g, dtype=torch.float64)
    g2 = (sde.diffusion(t) ** 2).reshape(5, 1, 1, 1)
    torch.testing.assert_close(reverse_drift(sde, x, t, s), sde.drift(x, t) - g2 * s)
    torch.testing.assert_close(reverse_drift(sde, x, t, s, probability_flow=True),
                               sde.drift(x, t) - 0.5 * g2 * s)
    c = sde.coefficients(t)
    torch.testing.assert_close(drift_from_score(x, s, c.f, c.g2), sde.drift(x, t) - g2 * s)
    with pytest.raises(ValueError, match="score shape"):
        reverse_drift(sde, x, t, s[:, :1])


@pytest.mark.parametrize("name", NAMES)
def test_probability_flow_field_and_tweedie(name):
    sde = make_sde(name)
    gm = random_gm(dim=3, seed=2)
    model = gm.as_model(sde)
    x = torch.randn(7, 3, generator=gen(1), dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    h = ProbabilityFlow(model)(t, x)
    torch.testing.assert_close(h, reverse_drift(sde, x, t, gm.score(x, t, sde), True))
    a, s = sde.alpha(t), sde.sigma(t)
    torch.testing.assert_close(tweedie_denoise(model, x, 0.3),
                               (x + s ** 2 * gm.score(x, t, sde)) / a)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_divergence_exact_and_hutchinson_match_the_jacobian(name):
    sde = make_sde(name)
    gm = random_gm(dim=3, seed=5)
    model = gm.as_model(sde)
    x = torch.randn(4, 3, generator=gen(2), dtype=torch.float64)
    t = torch.tensor(0.2, dtype=torch.float64)
    field = ProbabilityFlow(model)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda y: field(t, y[None])[0], xi)
                       for xi in x])                                      # (B, D, D)
    div = torch.diagonal(jac, dim1=1, dim2=2).sum(-1)
    aug = ProbabilityFlowWithDivergence(model, x)
    drift, dl = aug(t, (x, torch.zeros(1, 4, dtype=torch.float64)))
    torch.testing.assert_close(drift, field(t, x))
    torch.testing.assert_close(dl[0], div, rtol=1e-10, atol=1e-10)
    assert aug.n_vjp == 3
    v = torch.randn(5, 4, 3, generator=gen(3), dtype=torch.float64)
    _, q = ProbabilityFlowWithDivergence(model, x, v)(t, (x, torch.zeros(5, 4, dtype=torch.float64)))
    torch.testing.assert_close(q, torch.einsum("pbi,bij,pbj->pb", v, jac, v), rtol=1e-10, atol=1e-10)


class _Shrunk(sd.ScoreModel):
    """A subclass that changes what the model predicts by overriding `evaluate` only."""

    def evaluate(self, x, t, alpha, sigma, kind="eps", **cond):
        return 0.5 * super().evaluate(x, t, alpha, sigma, kind, **cond)


def test_a_subclass_overriding_evaluate_is_used_on_every_path():
    sde = sd.VPSDE()
    gm = random_gm(dim=2, seed=1)
    base = gm.as_model(sde)
    half = _Shrunk(base.net, sde, prediction="score")
    x = torch.randn(6, 2, generator=gen(4), dtype=torch.float64)
    torch.testing.assert_close(half.score(x, 0.4), 0.5 * base.score(x, 0.4))
    t = torch.tensor(0.4, dtype=torch.float64)
    torch.testing.assert_close(ProbabilityFlow(half)(t, x),
                               reverse_drift(sde, x, t, 0.5 * gm.score(x, t, sde), True))
    # samplers and the likelihood go through the same method
    a = sd.sample(half, solver="ddim", nfe=6, x_T=x).x
    b = sd.sample(base, solver="ddim", nfe=6, x_T=x).x
    assert not torch.allclose(a, b)
    la = sd.log_likelihood(half, x, rtol=1e-4, atol=1e-4).logp
    lb = sd.log_likelihood(base, x, rtol=1e-4, atol=1e-4).logp
    assert not torch.allclose(la, lb)


@pytest.mark.parametrize("path", ["ddim", "heun", "pf_ode_fixed", "pf_ode_adaptive", "torchsde",
                                  "likelihood", "encode", "dsm_loss"])
def test_forward_hooks_see_every_network_evaluation(path):
    sde = sd.VPSDE()
    net = sd.nets.MLPScoreNet(dim=2, hidden=16, depth=1, generator=gen(0)).double()
    model = sd.ScoreModel(net, sde)
    calls = []
    model.register_forward_hook(lambda mod, args, out: calls.append(1))
    net_calls = []
    net.register_forward_pre_hook(lambda mod, args: net_calls.append(1))
    x = torch.randn(4, 2, generator=gen(1), dtype=torch.float64)
    n0 = model.n_evals
    if path == "ddim":
        sd.sample(model, solver="ddim", nfe=5, x_T=x)
    elif path == "heun":
        sd.sample(model, solver="heun", nfe=6, x_T=x)
    elif path == "pf_ode_fixed":
        sd.sample(model, solver="pf_ode", method="midpoint", nfe=5, x_T=x)
    elif path == "pf_ode_adaptive":
        sd.sample(model, solver="pf_ode", nfe=None, x_T=x, rtol=1e-3, atol=1e-3)
    elif path == "torchsde":
        sd.sample(model, solver="torchsde", nfe=5, x_T=x, generator=gen(2))
    elif path == "likelihood":
        sd.log_likelihood(model, x, rtol=1e-3, atol=1e-3)
    elif path == "encode":
        sd.pf_ode_encode(model, x, rtol=1e-3, atol=1e-3)
    else:
        sd.dsm_loss(model, x, generator=gen(3))
    used = model.n_evals - n0
    assert used > 0 and len(calls) == used and len(net_calls) == used
