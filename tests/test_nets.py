"""Tests for scoresde.nets: embeddings and the residual MLP score network."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from scoresde.nets import (
    ACTIVATIONS,
    EMBEDDINGS,
    GaussianFourierEmbedding,
    MLPScoreNet,
    SinusoidalEmbedding,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_net(**kwargs) -> MLPScoreNet:
    kwargs.setdefault("hidden", 32)
    kwargs.setdefault("embed_dim", 16)
    kwargs.setdefault("generator", gen(0))
    return MLPScoreNet(**kwargs)


# ---------------------------------------------------------------------------------------
# embeddings


def test_fourier_embedding_formula_and_buffer() -> None:
    emb = GaussianFourierEmbedding(8, scale=3.0, generator=gen(0))
    assert "W" in emb.state_dict() and len(list(emb.parameters())) == 0
    expected_w = torch.randn(4, generator=gen(0)) * 3.0
    torch.testing.assert_close(emb.W, expected_w)
    t = torch.tensor([0.0, 0.25, 1.0])
    out = emb(t)
    assert out.shape == (3, 8)
    proj = 2 * math.pi * t[:, None] * expected_w
    torch.testing.assert_close(out, torch.cat([proj.sin(), proj.cos()], dim=-1))
    assert emb(torch.rand(2, 5)).shape == (2, 5, 8)


def test_fourier_embedding_frequency_scale() -> None:
    emb = GaussianFourierEmbedding(40_000, scale=16.0, generator=gen(1))
    assert abs(emb.W.std().item() / 16.0 - 1.0) < 0.03
    assert abs(emb.W.mean().item()) < 0.3
    other = GaussianFourierEmbedding(40_000, scale=16.0, generator=gen(2))
    assert not torch.allclose(emb.W, other.W)


def test_fourier_embedding_follows_double() -> None:
    emb = GaussianFourierEmbedding(6, generator=gen(0)).double()
    assert emb.W.dtype == torch.float64
    assert emb(torch.tensor([0.5])).dtype == torch.float64


def test_sinusoidal_embedding_formula() -> None:
    emb = SinusoidalEmbedding(6, max_period=100.0, time_scale=10.0)
    t = torch.tensor([0.0, 0.3], dtype=torch.float64)
    out = emb(t)
    assert out.shape == (2, 6) and out.dtype == torch.float64
    freqs = torch.tensor([1.0, 100.0 ** (-1 / 3), 100.0 ** (-2 / 3)], dtype=torch.float64)
    args = 10.0 * t[:, None] * freqs
    torch.testing.assert_close(out, torch.cat([args.sin(), args.cos()], dim=-1))
    # t = 0 embeds as [0, ..., 0, 1, ..., 1].
    torch.testing.assert_close(out[0], torch.tensor([0.0] * 3 + [1.0] * 3).double())
    # time_scale only rescales t; integer times are accepted.
    unit = SinusoidalEmbedding(6, max_period=100.0, time_scale=1.0)
    torch.testing.assert_close(out, unit(10.0 * t))
    assert unit(torch.tensor([3])).dtype == torch.get_default_dtype()


@pytest.mark.parametrize("cls", [GaussianFourierEmbedding, SinusoidalEmbedding])
@pytest.mark.parametrize("dim", [0, 7, -2, 2.0, True])
def test_embedding_bad_dim(cls: type, dim: object) -> None:
    # a wrong type is a TypeError, a wrong value a ValueError (scoresde.validation)
    err = TypeError if isinstance(dim, (bool, float)) else ValueError
    with pytest.raises(err, match="dim must be a positive even integer"):
        cls(dim)


def test_embedding_bad_scales() -> None:
    with pytest.raises(ValueError, match="scale"):
        GaussianFourierEmbedding(4, scale=0.0)
    with pytest.raises(ValueError, match="time_scale"):
        SinusoidalEmbedding(4, time_scale=-1.0)
    with pytest.raises(ValueError, match="max_period"):
        SinusoidalEmbedding(4, max_period=float("inf"))


# ---------------------------------------------------------------------------------------
# MLPScoreNet


def test_default_size() -> None:
    net = MLPScoreNet()
    n_params = sum(p.numel() for p in net.parameters())
    assert 30_000 < n_params < 100_000
    assert net(torch.randn(4, 2), torch.rand(4)).shape == (4, 2)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_output_shape(embedding: str, dim: int) -> None:
    net = small_net(dim=dim, embedding=embedding, depth=2)
    for batch in (1, 3):
        out = net(torch.randn(batch, dim), torch.rand(batch))
        assert out.shape == (batch, dim) and out.dtype == torch.float32
    assert net(torch.randn(0, dim), torch.rand(0)).shape == (0, dim)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_gradient_reaches_every_parameter(embedding: str) -> None:
    net = small_net(embedding=embedding, depth=3)
    x = torch.randn(16, 2, requires_grad=True)
    net(x, torch.rand(16)).pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_output_depends_on_time(embedding: str) -> None:
    net = small_net(embedding=embedding)
    x = torch.randn(8, 2)
    assert not torch.allclose(net(x, torch.full((8,), 0.1)), net(x, torch.full((8,), 0.9)))


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_scalar_time_broadcasts(embedding: str) -> None:
    net = small_net(embedding=embedding)
    x = torch.randn(9, 2)
    per_sample = net(x, torch.full((9,), 0.37))
    torch.testing.assert_close(net(x, torch.tensor(0.37)), per_sample, rtol=0, atol=0)
    torch.testing.assert_close(net(x, 0.37), per_sample, rtol=0, atol=0)
    # Per-sample times really are per sample: row i only depends on t[i].
    t = torch.rand(9)
    out = net(x, t)
    torch.testing.assert_close(out[4:5], net(x[4:5], t[4:5]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_float64(embedding: str) -> None:
    net32 = small_net(embedding=embedding)
    net64 = small_net(embedding=embedding).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    out = net64(x, t)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), net32(x.float(), t.float()), rtol=1e-4, atol=1e-5)
    # float32 times are accepted by a float64 network.
    torch.testing.assert_close(net64(x, t.float()), net64(x, t.float().double()))


def test_gradcheck_in_float64() -> None:
    net = small_net(hidden=8, embed_dim=4, depth=1, activation="softplus").double()
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.rand(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda y: net(y, t), (x,))


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("activation", ["gelu", nn.Tanh])
def test_config_round_trip(embedding: str, activation: object) -> None:
    net = MLPScoreNet(
        dim=3, hidden=24, depth=2, embedding=embedding, embed_dim=12, activation=activation
    )
    cfg = json.loads(json.dumps(net.config()))
    assert cfg["embedding"] == embedding and isinstance(cfg["activation"], str)
    rebuilt = MLPScoreNet.from_config(cfg)
    assert rebuilt.config() == net.config()
    x, t = torch.randn(6, 3), torch.rand(6)
    if embedding == "fourier":  # fresh random frequencies until the state_dict is loaded
        assert not torch.allclose(rebuilt(x, t), net(x, t))
    rebuilt.load_state_dict(net.state_dict())
    assert torch.equal(rebuilt(x, t), net(x, t))


def test_generator_makes_construction_reproducible() -> None:
    state = torch.random.get_rng_state()
    a = MLPScoreNet(generator=gen(5))
    b = MLPScoreNet(generator=gen(5))
    c = MLPScoreNet(generator=gen(6))
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG was used"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(torch.equal(sa[k], sc[k]) for k in sa)
    # Same initialisation law as nn.Linear: weights uniform in +-1/sqrt(fan_in).
    w = a.blocks[0].linear.weight
    bound = 1 / math.sqrt(128)
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


@pytest.mark.parametrize(
    ("kwargs", "match", "err"),
    [
        ({"embedding": "learned"}, "embedding must be one of .*'learned'", ValueError),
        ({"dim": 0}, "dim must be an integer >= 1, got 0", ValueError),
        ({"dim": 2.5}, "dim must be an integer", TypeError),
        ({"hidden": 0}, "hidden must be an integer >= 1", ValueError),
        ({"depth": 0}, "depth must be an integer >= 1, got 0", ValueError),
        ({"embed_dim": 63}, "embed_dim must be a positive even integer .*sin/cos.*63", ValueError),
        ({"embed_dim": 63, "embedding": "sinusoidal"}, "embed_dim .*63", ValueError),
        ({"activation": "swish2"}, "activation must be one of .*'swish2'", ValueError),
        ({"activation": nn.Identity}, "activation must be one of", ValueError),
        ({"fourier_scale": -1.0}, "fourier_scale", ValueError),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, match: str, err: type) -> None:
    with pytest.raises(err, match=match):
        MLPScoreNet(**kwargs)


def test_every_listed_activation_builds() -> None:
    for name in ACTIVATIONS:
        net = small_net(activation=name, depth=1)
        assert net.config()["activation"] == name
        assert net(torch.randn(2, 2), 0.5).shape == (2, 2)
    assert small_net(activation="SiLU").config()["activation"] == "silu"


def test_from_config_rejects_unknown_keys() -> None:
    cfg = MLPScoreNet().config() | {"width": 3}
    with pytest.raises(ValueError, match="unknown MLPScoreNet config keys \\['width'\\]"):
        MLPScoreNet.from_config(cfg)


@pytest.mark.parametrize(
    ("x_shape", "t_shape", "match"),
    [
        ((4, 3), (4,), r"x must have shape \(B, 2\), got \(4, 3\)"),
        ((4,), (4,), r"x must have shape \(B, 2\)"),
        ((4, 2, 1), (4,), r"x must have shape \(B, 2\)"),
        ((4, 2), (4, 1), r"t must be a scalar or have shape \(B,\) = \(4,\), got \(4, 1\)"),
        ((4, 2), (5,), r"t must be a scalar or have shape"),
        ((4, 2), (1,), r"t must be a scalar or have shape"),
    ],
)
def test_bad_input_shapes(x_shape: tuple, t_shape: tuple, match: str) -> None:
    net = small_net()
    with pytest.raises(ValueError, match=match):
        net(torch.randn(*x_shape), torch.rand(*t_shape))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_cuda_matches_cpu(embedding: str) -> None:
    net = small_net(embedding=embedding)
    x, t = torch.randn(7, 2), torch.rand(7)
    out = net.to("cuda")(x.cuda(), t.cuda())
    assert out.device.type == "cuda"
    assert net(x.cuda(), 0.5).device.type == "cuda"
    torch.testing.assert_close(out.cpu(), net.cpu()(x, t), rtol=1e-4, atol=1e-5)
