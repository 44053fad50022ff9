"""ScoreModel: every parametrisation converts to every other, exactly."""

import pytest
import torch
from oracle import SDE_FACTORIES, make_sde, random_gm

import scoresde as sd


def _net_for(prediction, gm, sde):
    """A 'network' that returns the exact quantity of the given parametrisation."""
    def net(x, t):
        a = sde.alpha(t).reshape(-1, 1)
        s = sde.sigma(t).reshape(-1, 1)
        score = gm.score(x, t, sde)
        eps = -s * score
        x0 = (x + s ** 2 * score) / a
        return {"score": score, "eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction]
    return net


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
@pytest.mark.parametrize("prediction", sd.models.PREDICTIONS)
def test_conversions_agree_with_exact(sde_name, prediction):
    sde = make_sde(sde_name)
    gm = random_gm(dim=3, k=2, seed=4)
    model = sd.ScoreModel(_net_for(prediction, gm, sde), sde, prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(16, generator=g, dtype=torch.float64)
    ref = sd.ScoreModel(_net_for("score", gm, sde), sde, prediction="score")
    for what in ("score", "eps", "x0", "v"):
        torch.testing.assert_close(getattr(model, what)(x, t), getattr(ref, what)(x, t),
                                   rtol=1e-9, atol=1e-9)
    a, s = sde.alpha(t).reshape(-1, 1), sde.sigma(t).reshape(-1, 1)
    torch.testing.assert_close(model.score(x, t), gm.score(x, t, sde), rtol=1e-9, atol=1e-9)
    # Tweedie: x0 = (x + sigma^2 score)/alpha
    torch.testing.assert_close(model.x0(x, t), (x + s ** 2 * gm.score(x, t, sde)) / a,
                               rtol=1e-9, atol=1e-9)


def test_n_evals_counts_network_calls_and_scalar_time_expands():
    seen = []

    def net(x, t):
        seen.append(t.shape)
        return torch.zeros_like(x)

    model = sd.ScoreModel(net, sd.VPSDE(), prediction="eps")
    x = torch.randn(5, 2)
    model.score(x, 0.3)
    model.x0(x, torch.full((5,), 0.3))
    model.v(x, 0.3)
    assert model.n_evals == 3 and seen == [(5,)] * 3


def test_from_score_fn_and_device():
    gm = random_gm()
    sde = sd.VPSDE()
    model = gm.as_model(sde)
    x = torch.randn(4, 2)
    torch.testing.assert_close(model.score(x, 0.5), gm.score(x, 0.5, sde))
    assert model.prediction == "score" and model.device == torch.device("cpu")


def test_bad_inputs():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="prediction must be one of"):
        sd.ScoreModel(lambda x, t: x, sde, prediction="noise")
    with pytest.raises(TypeError, match="sde must be"):
        sd.ScoreModel(lambda x, t: x, "vp")
    bad = sd.ScoreModel(lambda x, t: x[:, :1], sde)
    with pytest.raises(ValueError, match="must return the input's shape"):
        bad.score(torch.zeros(3, 2), 0.5)
    ok = sd.ScoreModel(lambda x, t: x, sde)
    with pytest.raises(ValueError, match="outside the time range"):
        ok.eps(torch.zeros(3, 2), 1.2)
    with pytest.raises(ValueError, match="B=3"):
        ok.eps(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(TypeError, match="floating"):
        ok.eps(torch.zeros(3, 2, dtype=torch.long), 0.5)
