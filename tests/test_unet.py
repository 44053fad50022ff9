"""Tests for scoresde.nets.UNet: shapes and dtypes, time and class conditioning, independence
of the samples in a batch, config/checkpoint round trips, gradients, presets."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde.nets import EMBEDDINGS, PRESETS, UNet, net_from_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "nets.md"

#: the parameter counts documented in docs/nets.md (test_preset_parameter_counts_match_docs)
PRESET_PARAMS = {"tiny": 271_649, "small": 6_469_889, "ddpm_cifar10": 35_746_307}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturbed(net: UNet, seed: int = 1, scale: float = 0.1) -> UNet:
    """`net` with noise added to every parameter: a fresh UNet outputs exactly 0 (its output
    convolution is zero-initialised), so outputs only tell inputs apart after this."""
    g = gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def small(**kwargs) -> UNet:
    kw = {"in_channels": 1, "channels": 16, "ch_mult": (1, 2), "num_res_blocks": 1,
          "attention_levels": (1,), "dropout": 0.0, "norm_groups": 8, "generator": gen(0)}
    kw.update(kwargs)
    return UNet(**kw)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ----- shapes, dtypes, sizes -------------------------------------------------------------


@pytest.mark.parametrize(("c", "h", "w", "ch_mult"), [
    (1, 8, 8, (1, 2)), (3, 8, 8, (1, 2)), (1, 16, 12, (1, 2, 2)), (3, 16, 12, (1, 2, 2)),
    (1, 28, 28, (1, 2, 2)), (3, 28, 28, (1, 2)),
])
def test_output_has_the_input_shape(c: int, h: int, w: int, ch_mult: tuple) -> None:
    net = perturbed(small(in_channels=c, ch_mult=ch_mult))
    x = torch.randn(3, c, h, w, generator=gen(2))
    out = net(x, torch.rand(3, generator=gen(3)))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_fresh_network_outputs_zero_and_construction_is_reproducible() -> None:
    state = torch.random.get_rng_state()
    a, b, c = small(generator=gen(5)), small(generator=gen(5)), small(generator=gen(6))
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG was used"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv_in.weight"], sc["conv_in.weight"])
    # zero-initialised output convolution: exactly 0 out, as DDPM's init_scale=0
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(a(x, torch.rand(2)), torch.zeros_like(x))
    # DDPM's initialisation: Xavier-uniform weights, zero biases
    w = a.conv_in.weight
    bound = math.sqrt(6.0 / (1 * 9 + 16 * 9))
    assert 0.9 * bound < w.abs().max() <= bound
    assert not a.conv_in.bias.any() and not a.down[0].conv2.weight.any()


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_float64_and_bfloat16(embedding: str) -> None:
    net = perturbed(small(in_channels=3, embedding=embedding)).eval()
    x, t = torch.randn(4, 3, 8, 8, generator=gen(2)), torch.rand(4, generator=gen(3))
    ref = net(x, t)
    out64 = net.to(torch.float64)(x.double(), t.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), ref, rtol=1e-4, atol=1e-4)
    out16 = net.to(torch.bfloat16)(x.bfloat16(), t)     # float32 t into a bfloat16 net
    assert out16.dtype == torch.bfloat16 and out16.shape == x.shape
    err = (out16.float() - ref).norm() / ref.norm()
    assert err < 0.1, f"bfloat16 relative error {err:.3f}"


def test_sizes_that_do_not_fit_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"image_size \(6, 6\) is not divisible by .* = 4"):
        small(ch_mult=(1, 2, 2), image_size=6)
    net = small(ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"divisible by 2 \*\* \(len\(ch_mult\) - 1\) = 4.*\(6, 8\)"):
        net(torch.randn(2, 1, 6, 8), torch.rand(2))
    sized = small(image_size=(8, 12))
    assert sized(torch.randn(1, 1, 8, 12), 0.5).shape == (1, 1, 8, 12)
    with pytest.raises(ValueError, match=r"built for images of size \(8, 12\).*\(8, 8\)"):
        sized(torch.randn(1, 1, 8, 8), 0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\), got \(2, 3, 8, 8\)"):
        net(torch.randn(2, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        net(torch.randn(2, 8, 8), torch.rand(2))
    with pytest.raises(TypeError, match="floating-point"):
        net(torch.ones(2, 1, 8, 8, dtype=torch.long), torch.rand(2))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(B,\) = \(2,\)"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    ({"ch_mult": ()}, ValueError, "at least one level"),
    ({"ch_mult": 2}, TypeError, "ch_mult must be a sequence"),
    ({"ch_mult": (1, 0)}, ValueError, r"ch_mult\[1\] must be an integer >= 1"),
    ({"attention_levels": (2,)}, ValueError, r"attention_levels must be level indices in \[0, 1\]"),
    ({"dropout": 1.0}, ValueError, "dropout"),
    ({"embedding": "learned"}, ValueError, "embedding must be one of"),
    ({"embed_dim": 15}, ValueError, "embed_dim must be a positive even integer"),
    ({"norm_groups": 32}, ValueError, r"norm_groups=32 must divide .* \[16\]"),
    ({"num_heads": 3}, ValueError, r"num_heads=3 must divide the widths with attention"),
    ({"num_classes": 0}, ValueError, "num_classes must be an integer >= 1"),
    ({"in_channels": 1.0}, TypeError, "in_channels must be an integer"),
    ({"image_size": (8, 8, 8)}, ValueError, "image_size must be an int or"),
])
def test_bad_constructor_arguments(kwargs: dict, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        small(**kwargs)


# ----- time -------------------------------------------------------------------------------


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_output_depends_on_time_and_only_on_time(embedding: str) -> None:
    net = perturbed(small(embedding=embedding)).eval()
    x = torch.randn(5, 1, 8, 8, generator=gen(2))
    early, late = net(x, torch.full((5,), 0.1)), net(x, torch.full((5,), 0.9))
    assert (early - late).abs().amax(dim=(1, 2, 3)).min() > 1e-3   # every sample changes
    torch.testing.assert_close(net(x, 0.1), early, rtol=0, atol=0)   # scalar t broadcasts
    torch.testing.assert_close(net(x, torch.tensor(0.1)), early, rtol=0, atol=0)
    torch.testing.assert_close(net(x, torch.full((5,), 0.1)), early, rtol=0, atol=0)
    # two copies of an image at the same time give the same output
    twin = net(x[[1, 1]], torch.tensor([0.3, 0.3]))
    assert torch.equal(twin[0], twin[1])


# ----- the batch: equivariance, no batch statistics -------------------------------------


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_samples_are_independent_in_float64(mode: str) -> None:
    # train mode too: GroupNorm keeps no batch statistics (dropout is 0 here)
    net = perturbed(small(in_channels=3, num_classes=3)).double()
    net.train(mode == "train")
    g = gen(4)
    x = torch.randn(7, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand(7, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 3, 1])
    out = net(x, t, y=y)
    perm = torch.randperm(7, generator=g)
    torch.testing.assert_close(net(x[perm], t[perm], y=y[perm]), out[perm], rtol=0, atol=1e-12)
    for i in (0, 4):
        alone = net(x[i:i + 1], t[i:i + 1], y=y[i:i + 1])
        torch.testing.assert_close(alone, out[i:i + 1], rtol=0, atol=1e-12)
        # other random inputs around sample i change nothing for it
        other = torch.randn(7, 3, 8, 8, generator=g, dtype=torch.float64) * 10
        other[i] = x[i]
        mixed = net(other, torch.rand(7, generator=g, dtype=torch.float64).index_fill(0,
                    torch.tensor([i]), float(t[i])), y=torch.randint(0, 4, (7,), generator=g)
                    .index_fill(0, torch.tensor([i]), int(y[i])))
        torch.testing.assert_close(mixed[i:i + 1], out[i:i + 1], rtol=0, atol=1e-12)


def test_dropout_is_active_in_train_mode_only() -> None:
    net = perturbed(small(dropout=0.5))
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert not torch.equal(net.train()(x, t), net(x, t))
    assert torch.equal(net.eval()(x, t), net(x, t))


# ----- class conditioning ----------------------------------------------------------------


def test_class_conditioning_and_the_null_label() -> None:
    net = perturbed(small(num_classes=4)).eval()
    assert net.null_label == 4 and net.label_embed.num_embeddings == 5
    assert small().null_label is None
    x, t = torch.randn(5, 1, 8, 8, generator=gen(2)), torch.rand(5, generator=gen(3))
    outs = [net(x, t, y=torch.full((5,), k)) for k in range(5)]
    for a in range(5):
        for b in range(a):
            assert (outs[a] - outs[b]).abs().amax(dim=(1, 2, 3)).min() > 1e-4, (a, b)
    torch.testing.assert_close(net(x, t), outs[4], rtol=0, atol=0)          # no y: null
    torch.testing.assert_close(net(x, t, y=None), outs[4], rtol=0, atol=0)
    mixed = net(x, t, y=torch.tensor([0, 1, 2, 3, 4]))
    for i in range(5):
        torch.testing.assert_close(mixed[i], outs[i][i], rtol=1e-5, atol=1e-6)
    assert net(x, t, y=torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32)).shape == x.shape


@pytest.mark.parametrize(("y", "err", "match"), [
    (torch.tensor([0, 5]), ValueError, r"y contains 5; labels must lie in \[0, 4\]"),
    (torch.tensor([-1, 0]), ValueError, r"y contains -1"),
    (torch.tensor([0.0, 1.0]), TypeError, "y must be an integer tensor"),
    (torch.tensor([True, False]), TypeError, "y must be an integer tensor"),
    ([0, 1], TypeError, "y must be an integer tensor .* got list"),
    (torch.tensor([[0], [1]]), ValueError, r"y must have shape \(B,\) = \(2,\)"),
    (torch.tensor(1), ValueError, r"y must have shape \(B,\)"),
])
def test_bad_labels(y: object, err: type, match: str) -> None:
    net = small(num_classes=4)
    with pytest.raises(err, match=match):
        net(torch.randn(2, 1, 8, 8), torch.rand(2), y=y)


def test_conditioning_the_network_does_not_take() -> None:
    with pytest.raises(TypeError, match="unconditional UNet; build it with num_classes"):
        small()(torch.randn(2, 1, 8, 8), torch.rand(2), y=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"only the conditioning keyword y .*\['mask'\]"):
        small(num_classes=2)(torch.randn(2, 1, 8, 8), torch.rand(2), mask=torch.ones(2))


# ----- config, registry, checkpoints -----------------------------------------------------


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_config_round_trip_reproduces_outputs(embedding: str) -> None:
    net = perturbed(small(in_channels=3, embedding=embedding, num_classes=3, num_heads=2,
                          image_size=(8, 12), attention_levels=(0, 1))).eval()
    cfg = json.loads(json.dumps(net.config()))
    assert set(cfg) == set(UNet.from_config(cfg).config())
    for rebuilt in (UNet.from_config(cfg), net_from_config("unet", cfg),
                    net_from_config("UNet", cfg)):
        assert type(rebuilt) is UNet and rebuilt.config() == net.config()
        rebuilt.load_state_dict(net.state_dict())
        x, t, y = torch.randn(3, 3, 8, 12), torch.rand(3), torch.tensor([0, 3, 2])
        assert torch.equal(rebuilt.eval()(x, t, y=y), net(x, t, y=y))
    with pytest.raises(ValueError, match=r"unknown UNet config keys \['width'\]"):
        UNet.from_config(cfg | {"width": 3})


def test_registered_as_unet() -> None:
    assert sd.NETS["unet"] is UNet and sd.nets.UNet is UNet


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net = UNet.preset("tiny", num_classes=10, generator=gen(0))
    model = sd.ScoreModel(net, sd.VPSDE())
    data = torch.rand(32, 1, 8, 8, generator=gen(1)) * 2 - 1
    trainer = sd.Trainer(model, batch_size=8, ema_decay=0.9, progress=False, seed=0)
    trainer.fit(data, steps=2)
    path = trainer.save(tmp_path / "unet.pt")
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4) * 0.9 + 0.05, torch.tensor([0, 9, 10, 3])
    for ema, ref in ((True, trainer.ema_model()), (False, trainer.model)):
        loaded = sd.load_model(path, ema=ema)
        assert isinstance(loaded.net, UNet) and loaded.net.config() == net.config()
        out = loaded.eps(x, t, y=y)
        assert torch.equal(out, ref.eval().eps(x, t, y=y)) and out.abs().sum() > 0


# ----- gradients ---------------------------------------------------------------------------


def test_gradients_reach_every_parameter_after_two_steps() -> None:
    net = small(in_channels=3, num_classes=2, attention_levels=(0, 1))
    x, t, y = torch.randn(6, 3, 8, 8, generator=gen(2)), torch.rand(6), torch.tensor([0, 1, 2] * 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def grads() -> dict[str, torch.Tensor]:
        opt.zero_grad()
        (net(x, t, y=y) - x).square().mean().backward()
        return {name: p.grad for name, p in net.named_parameters()}

    # the output layers start at exactly 0 (conv_out, each block's conv2, attention's proj),
    # so at initialisation only conv_out gets a gradient, one step later the blocks' conv2
    # and proj too, and after the second step every parameter
    first = grads()
    reached = {n for n, g in first.items() if g is not None and g.abs().sum() > 0}
    assert reached == {"conv_out.weight", "conv_out.bias"}
    opt.step()
    second = grads()
    assert second["down.0.conv2.weight"].abs().sum() > 0
    assert second["label_embed.weight"] is None or not second["label_embed.weight"].any()
    opt.step()
    for name, g in grads().items():
        assert g is not None and torch.isfinite(g).all(), name
        assert g.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_backward() -> None:
    net = perturbed(small(in_channels=3, num_classes=3)).eval()
    x, t, y = torch.randn(5, 3, 16, 12), torch.rand(5), torch.tensor([0, 1, 2, 3, 1])
    ref = net(x, t, y=y)
    cuda = net.to("cuda")
    xc = x.cuda().requires_grad_()
    out = cuda(xc, t.cuda(), y=y.cuda())
    assert out.device.type == "cuda" and out.shape == x.shape
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)
    out.square().sum().backward()
    assert xc.grad is not None and all(p.grad is not None for p in cuda.parameters())
    assert cuda(x.cuda(), 0.5).shape == x.shape                  # scalar t, null label
    bf = cuda.to(torch.bfloat16)(x.cuda().bfloat16(), t.cuda(), y=y.cuda())
    assert bf.dtype == torch.bfloat16 and torch.isfinite(bf).all()


# ----- presets and the library around the net --------------------------------------------


def test_preset_parameter_counts_match_docs() -> None:
    assert set(PRESETS) == set(PRESET_PARAMS)
    text = DOCS.read_text()
    for name, count in PRESET_PARAMS.items():
        net = UNet.preset(name, generator=gen(0))
        assert n_params(net) == count, name
        assert re.search(rf"`{name}`.*\| {count:,} \|", text), f"docs/nets.md lacks {name}'s count"
    # Ho et al. 2020: 35.7M parameters for CIFAR-10
    assert round(PRESET_PARAMS["ddpm_cifar10"] / 1e6, 1) == 35.7
    assert 100_000 <= PRESET_PARAMS["tiny"] <= 300_000
    tiny = UNet.preset("tiny", num_classes=10)
    assert n_params(tiny) == PRESET_PARAMS["tiny"] + 11 * 4 * 32   # label embedding: 11 rows
    with pytest.raises(ValueError, match="name must be one of"):
        UNet.preset("huge")


def test_score_model_sampling_and_dsm_loss_on_images() -> None:
    sde = sd.VPSDE()
    # a fresh UNet predicts eps = 0 exactly, so both have closed forms
    model = sd.ScoreModel(UNet.preset("tiny", generator=gen(0)), sde)
    x_T = torch.randn(4, 1, 8, 8, generator=gen(1))
    res = sd.sample(model, (4, 1, 8, 8), solver="ddim", nfe=5, x_T=x_T)
    assert res.nfe == 5 and res.x.shape == (4, 1, 8, 8)
    # DDIM with eps = 0: x_s = alpha_s / alpha_t * x_t; Tweedie at the end divides by alpha
    torch.testing.assert_close(res.x, x_T / sde.alpha(torch.tensor(1.0)), rtol=1e-4, atol=1e-5)
    x0 = torch.rand(8, 1, 8, 8, generator=gen(2)) * 2 - 1
    noise = torch.randn(8, 1, 8, 8, generator=gen(3))
    loss = sd.dsm_loss(model, x0, t=torch.rand(8, generator=gen(4)) * 0.9 + 0.05, noise=noise)
    torch.testing.assert_close(loss, noise.square().mean())
    # a trained-looking network: a loss with gradients, samples that are finite and differ
    perturbed(model.net, scale=0.02)
    loss = sd.dsm_loss(model, x0, generator=gen(5))
    loss.backward()
    assert torch.isfinite(loss) and model.net.conv_in.weight.grad.abs().sum() > 0
    with torch.no_grad():
        res = sd.sample(model, (4, 1, 8, 8), solver="ddim", nfe=5, generator=gen(6))
    assert torch.isfinite(res.x).all()
    cond = sd.ScoreModel(perturbed(UNet.preset("tiny", num_classes=10, generator=gen(0))), sde)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 0.5])
    assert not torch.allclose(cond.eps(x, t, y=torch.tensor([1, 1])), cond.eps(x, t))
