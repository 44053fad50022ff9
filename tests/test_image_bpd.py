"""Bits per dimension of discrete images (scoresde.likelihood.bpd.image_bits_per_dim and the
quantization of scoresde.data.ImageDataset), against exact answers: known discrete
distributions under perfect models, and a Gaussian-mixture oracle on 1x2x2 "images"."""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.analytic import GaussianMixture
from scoresde.data import ImageDataset

RANGES = {"[0,1]": (0.0, 1.0), "[-1,1]": (-1.0, 1.0)}
ODE = {"rtol": 1e-4, "atol": 1e-4, "dtype": torch.float64}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- perfect models


@pytest.mark.parametrize("levels", [17, 256])
@pytest.mark.parametrize("scaling", ["[0,1]", "[-1,1]"])
def test_uniform_discrete_data_under_the_uniform_density_is_log2_levels(levels, scaling):
    """k uniform over L levels; the perfect continuous model is the uniform density on the
    dequantization cube [lo, hi)^D, log p = -D log(hi - lo): log2 L bits/dim exactly."""
    k = torch.randint(0, levels, (64, 1, 2, 3), generator=gen(0))
    ds = ImageDataset(k, levels=levels, scaling=scaling, dtype=torch.float64)
    y = ds.dequantize(gen(1))
    lo, hi = RANGES[scaling]
    assert bool(((y >= lo) & (y < hi)).all())        # the density's support holds every draw
    d = y[0].numel()
    logp = torch.full((64,), -d * math.log(hi - lo), dtype=torch.float64)
    bpd = sd.bits_per_dim(logp, y.shape, **ds.quantization)
    torch.testing.assert_close(bpd, torch.full_like(bpd, math.log2(levels)), rtol=1e-13, atol=0)


@pytest.mark.parametrize("scaling", ["[0,1]", "[-1,1]"])
def test_a_perfect_model_of_a_discrete_distribution_gives_its_entropy(scaling):
    """Pixels i.i.d. from P over L = 17 levels; the perfect model is piecewise constant,
    p(y) = prod_d P(k_d) / width, where the Jensen bound is tight: each sample's bits/dim
    is exactly -mean_d log2 P(k_d), and their mean estimates the entropy H(P)."""
    levels = 17
    p = torch.rand(levels, generator=gen(2), dtype=torch.float64) ** 3 + 0.01
    p = p / p.sum()
    k = torch.multinomial(p, 4000 * 4, replacement=True, generator=gen(3)).reshape(4000, 1, 2, 2)
    ds = ImageDataset(k, levels=levels, scaling=scaling, dtype=torch.float64)
    y = ds.dequantize(gen(4))
    lo, hi = RANGES[scaling]
    width = (hi - lo) / levels
    kk = ds.to_levels(y)
    assert torch.equal(kk, k)
    logp = (p[kk].log() - math.log(width)).sum(dim=(1, 2, 3))
    res = sd.BPDResult(bpd=sd.bits_per_dim(logp, y.shape, **ds.quantization), stderr=None,
                       logp=logp, nfe=0)
    torch.testing.assert_close(res.bpd, -p[k].log2().mean(dim=(1, 2, 3)), rtol=1e-12, atol=1e-12)
    # the mean estimates the entropy; its standard error is sd(-log2 P(k)) / sqrt(4 N)
    entropy = float(-(p * p.log2()).sum())
    info_var = float((p * p.log2() ** 2).sum()) - entropy ** 2
    assert abs(res.mean_stderr / math.sqrt(info_var / (4 * 4000)) - 1) < 0.1
    assert abs(res.mean - entropy) < 4 * res.mean_stderr
    assert entropy < math.log2(levels) - 0.3          # not the uniform case again


# ----------------------------------------------------------------------------- the oracle


def image_mixture(levels: int = 17, scaling: str = "[-1,1]"):
    """A 4-D Gaussian mixture seen as 1x2x2 images, inside the model range, and discrete data
    drawn from it: k = quantize(x), x ~ the mixture."""
    base = GaussianMixture.random(3, 4, gen(0), spread=0.4, min_std=0.15, max_std=0.3)
    lo, hi = RANGES[scaling]
    c, s = (lo + hi) / 2, (hi - lo) / 2              # the mixture of [-1,1] mapped to the range
    gm = GaussianMixture(base.weights, c + s * base.means, s * s * base.covs,
                         event_shape=(1, 2, 2))
    return gm, gm.as_model(sd.VPSDE())


def discrete_sample(gm, n: int, seed: int, levels: int, scaling: str) -> torch.Tensor:
    x = gm.sample(n, gen(seed), dtype=torch.float64)
    return sd.quantize(x, levels=levels, scaling=scaling)


def test_hutchinson_image_bpd_agrees_with_the_exact_divergence():
    levels, scaling, n = 17, "[-1,1]", 128
    gm, model = image_mixture(levels, scaling)
    ds = ImageDataset(discrete_sample(gm, n, 1, levels, scaling), levels=levels, scaling=scaling)
    # one batch each: the same generator gives the same dequantization draws, then the probes
    run = lambda **kw: sd.image_bits_per_dim(model, ds, batch_size=None, generator=gen(2),  # noqa: E731
                                             progress=False, **ODE, **kw)
    ex = run(divergence="exact")
    h16 = run(n_probes=16)
    h4 = run(n_probes=4)
    # the exact divergence is the closed form -log2 p(y)/D + log2(L/2), to the ODE tolerance
    y = ds.dequantize(gen(2), dtype=torch.float64)
    closed = sd.bits_per_dim(gm.log_prob(y), y.shape, **ds.quantization)
    assert (ex.bpd - closed).abs().max() < 3e-3
    # Hutchinson: unbiased, within its standard error of the exact value
    assert abs(h16.mean - ex.mean) < h16.mean_stderr
    for h in (h16, h4):
        diff = h.bpd - ex.bpd                        # paired: only the probes differ
        assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n)
    # and its probe noise falls like 1/sqrt(n_probes): 4x the probes, half the spread
    ratio = float((h4.bpd - ex.bpd).std() / (h16.bpd - ex.bpd).std())
    assert 1.5 < ratio < 2.7, ratio
    assert ex.stderr is None and h16.nfe > 0 and ex.bpd.dtype == torch.float64


def test_image_bpd_is_calibrated_and_its_stderr_shrinks_with_more_samples(capsys):
    """The mean over N samples lands within its standard error of the population value
    E[-log2 p(y)]/D + log2(L/2) (y dequantized discrete data), computed in closed form by
    Monte Carlo over 200k exact log-densities; the standard error halves from 64 to 256."""
    levels, scaling = 17, "[0,1]"
    gm, model = image_mixture(levels, scaling)
    kp = discrete_sample(gm, 200_000, 9, levels, scaling)
    yp = sd.uniform_dequantize(kp, levels=levels, scaling=scaling, generator=gen(10),
                               dtype=torch.float64)
    population = sd.bits_per_dim(gm.log_prob(yp), yp.shape, levels=levels, scaling=scaling)
    pop_mean = float(population.mean())
    assert float(population.std()) / math.sqrt(200_000) < 2e-3

    ds = ImageDataset(discrete_sample(gm, 256, 1, levels, scaling), levels=levels,
                      scaling=scaling)
    big = sd.image_bits_per_dim(model, ds, n_draws=2, n_probes=2, batch_size=64,
                                generator=gen(3), progress=True, **ODE)
    assert "bits/dim" in capsys.readouterr().err      # the progress bar over the batches
    assert big.bpd.shape == (256,) and big.stderr.shape == (256,) and big.logp.shape == (256,)
    assert abs(big.mean - pop_mean) < 3 * big.mean_stderr, (big.mean, pop_mean, big.mean_stderr)
    assert big.mean_stderr < 0.06
    small = sd.image_bits_per_dim(model, ds.subset(slice(0, 64)), n_probes=2, batch_size=64,
                                  generator=gen(4), progress=False, **ODE)
    assert abs(small.mean - pop_mean) < 3 * small.mean_stderr
    ratio = small.mean_stderr / big.mean_stderr
    assert 1.5 < ratio < 2.7, ratio


# ----------------------------------------------------------------------------- the interface


def test_image_bpd_takes_the_quantization_from_the_data_set():
    levels, scaling = 256, "[-1,1]"
    gm, model = image_mixture(levels, scaling)
    k = discrete_sample(gm, 6, 1, levels, scaling)
    ds = ImageDataset(k, levels=levels, scaling=scaling)
    kw = {"n_probes": 2, "batch_size": 4, "progress": False, "rtol": 1e-3, "atol": 1e-3,
          "dtype": torch.float64}
    a = sd.image_bits_per_dim(model, ds, generator=gen(5), **kw)
    b = sd.image_bits_per_dim(model, k, levels=levels, scaling=scaling, generator=gen(5), **kw)
    torch.testing.assert_close(a.bpd, b.bpd, rtol=0, atol=0)
    # the same as dequantized_bits_per_dim batch by batch (one place computes it)
    g = gen(5)
    parts = [sd.dequantized_bits_per_dim(model, k[lo:lo + 4], levels=levels, scaling=scaling,
                                         generator=g, divergence="hutchinson", n_probes=2,
                                         rtol=1e-3, atol=1e-3, dtype=torch.float64).bpd
             for lo in (0, 4)]
    torch.testing.assert_close(a.bpd, torch.cat(parts), rtol=0, atol=0)
    # a per-sample logdet is split over the batches: logp shifts by it exactly
    shift = torch.arange(6, dtype=torch.float64)
    c = sd.image_bits_per_dim(model, ds, generator=gen(5), logdet=shift, **kw)
    torch.testing.assert_close(c.logp, a.logp + shift, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c.bpd, a.bpd - shift / (4 * math.log(2)), rtol=1e-12, atol=1e-12)
    one = sd.BPDResult(bpd=a.bpd[:1], stderr=None, logp=a.logp[:1], nfe=0)
    assert one.mean == float(a.bpd[0]) and math.isnan(one.mean_stderr)


def test_image_bpd_refuses_bad_input():
    gm, model = image_mixture()
    k = discrete_sample(gm, 4, 1, 17, "[-1,1]")
    ds = ImageDataset(k, levels=17)
    with pytest.raises(ValueError, match="levels= and scaling="):
        sd.image_bits_per_dim(model, k, levels=17)
    with pytest.raises(ValueError, match="disagrees"):
        sd.image_bits_per_dim(model, ds, levels=256)
    with pytest.raises(ValueError, match="disagrees"):
        sd.image_bits_per_dim(model, ds, scaling="[0,1]")
    with pytest.raises(TypeError, match="data must be"):
        sd.image_bits_per_dim(model, k.tolist(), levels=17, scaling="[-1,1]")
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        sd.image_bits_per_dim(model, k + 17, levels=17, scaling="[-1,1]", progress=False)
    with pytest.raises(ValueError, match="scaling"):
        sd.image_bits_per_dim(model, k, levels=17, scaling="continuous")
    with pytest.raises(TypeError, match="twice"):
        sd.image_bits_per_dim(model, ds, n_bits=4)
    with pytest.raises(ValueError, match="n_draws"):
        sd.image_bits_per_dim(model, ds, n_draws=0)
