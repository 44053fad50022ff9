"""The image metrics: Fréchet distance and KID against closed forms and naive sums, and the
feature classifier (accuracy on a synthetic labelled image set, its cache)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import scipy.linalg
import torch

import scoresde as sd
from scoresde.evaluation import features
from scoresde.evaluation.features import (
    CACHE_NAME,
    FeatureClassifier,
    data_fingerprint,
    feature_classifier,
    train_feature_classifier,
)
from scoresde.evaluation.metrics import (
    METRICS,
    KIDResult,
    feature_metric,
    frechet_distance,
    gaussian_frechet_distance,
    kid,
    noise_floor,
)

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scipy_fd(x: torch.Tensor, y: torch.Tensor) -> float:
    """FD the way the reference FID code computes it (numpy.cov, scipy.linalg.sqrtm)."""
    a, b = x.numpy(), y.numpy()
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def naive_kid(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased MMD² with the cubic kernel on all rows, by explicit double loops' sums."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.diag().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1)) - 2 * kxy.mean())


# --------------------------------------------------------------------------- Fréchet distance


def test_fd_zero_for_identical_sets_and_exact_mean_shift():
    g = gen(0)
    x = torch.randn(500, 16, generator=g, dtype=F64) @ torch.randn(16, 16, generator=g, dtype=F64)
    assert abs(float(frechet_distance(x, x))) < 1e-8 * float(x.var(0).sum())
    # a shift v changes only the means: FD(x, x + v) = |v|^2 exactly, and grows with |v|
    v = torch.randn(16, generator=g, dtype=F64)
    vals = [float(frechet_distance(x, x + s * v)) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    np.testing.assert_allclose(vals, [s * s * float(v @ v) for s in (0.0, 0.5, 1.0, 2.0, 4.0)],
                               rtol=1e-9, atol=1e-9)
    assert all(a < b for a, b in zip(vals, vals[1:], strict=False))


def test_fd_matches_scipy_sqrtm_and_is_symmetric():
    g = gen(1)
    x = torch.randn(400, 8, generator=g, dtype=F64) * torch.linspace(0.2, 3, 8, dtype=F64)
    y = torch.randn(300, 8, generator=g, dtype=F64) @ torch.randn(8, 8, generator=g, dtype=F64) + 0.3
    fd = float(frechet_distance(x, y))
    assert fd == pytest.approx(scipy_fd(x, y), rel=1e-9)
    assert float(frechet_distance(y, x)) == pytest.approx(fd, rel=1e-12)
    # float32 in, float32 out, the same value (computed in float64)
    fd32 = frechet_distance(x.float(), y.float())
    assert fd32.dtype == torch.float32 and float(fd32) == pytest.approx(fd, rel=1e-5)


def test_fd_closed_form_of_two_gaussians_on_large_samples():
    # N(mu1, S1) vs N(mu2, S2) in 2-D: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))
    mu1, mu2 = torch.tensor([0.0, 0.0], dtype=F64), torch.tensor([1.0, -0.5], dtype=F64)
    s1 = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=F64)
    s2 = torch.tensor([[0.5, -0.2], [-0.2, 0.3]], dtype=F64)
    exact = float((mu1 - mu2).square().sum()) + float(np.trace(
        s1.numpy() + s2.numpy() - 2 * scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real))
    assert float(gaussian_frechet_distance(mu1, s1, mu2, s2)) == pytest.approx(exact, rel=1e-12)
    g = gen(2)
    n = 20000
    x = mu1 + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(s1).T
    y = mu2 + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(s2).T
    assert float(frechet_distance(x, y)) == pytest.approx(exact, rel=0.03)


def test_fd_singular_covariances_are_fine():
    # fewer samples than dimensions: singular covariances, still real, >= 0 and symmetric
    g = gen(3)
    x, y = torch.randn(10, 32, generator=g, dtype=F64), torch.randn(12, 32, generator=g, dtype=F64)
    fd = frechet_distance(x, y)
    assert torch.isfinite(fd) and float(fd) > 0
    assert float(frechet_distance(y, x)) == pytest.approx(float(fd), rel=1e-10)
    assert float(frechet_distance(x, x)) < 1e-10


def test_fd_input_validation():
    with pytest.raises(TypeError):
        frechet_distance([[0.0, 1.0]], torch.zeros(3, 2))
    with pytest.raises(ValueError, match="same dimension"):
        frechet_distance(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="shape"):
        gaussian_frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2))


# ------------------------------------------------------------------------------------ KID


def test_kid_equals_the_naive_unbiased_mmd_on_all_rows():
    g = gen(4)
    x = torch.randn(60, 5, generator=g, dtype=F64)
    y = torch.randn(60, 5, generator=g, dtype=F64) * 1.3 + 0.2
    res = kid(x, y, subsets=3, subset_size=60, generator=g)
    assert isinstance(res, KIDResult) and res.values.shape == (3,)
    # every subset is the whole set: each value is the full U-statistic
    np.testing.assert_allclose(res.values.numpy(), naive_kid(x, y), rtol=1e-12)
    # subsets: each value is the U-statistic of its subsets (re-drawn with the same generator)
    res2 = kid(x, y, subsets=4, subset_size=20, generator=gen(7))
    g7 = gen(7)
    ix = [torch.randperm(60, generator=g7)[:20] for _ in range(4)]
    iy = [torch.randperm(60, generator=g7)[:20] for _ in range(4)]
    want = [naive_kid(x[a], y[b]) for a, b in zip(ix, iy, strict=True)]
    np.testing.assert_allclose(res2.values.numpy(), want, rtol=1e-12)
    assert float(res2.mean) == pytest.approx(np.mean(want), rel=1e-12)
    assert float(res2.std) == pytest.approx(np.std(want, ddof=1), rel=1e-10)


def test_kid_unbiased_for_equal_distributions_and_positive_for_a_shift():
    g = gen(5)
    same, shifted = [], []
    for _ in range(200):
        x = torch.randn(100, 4, generator=g, dtype=F64)
        y = torch.randn(100, 4, generator=g, dtype=F64)
        same.append(float(kid(x, y, subsets=2, subset_size=50, generator=g).mean))
        shifted.append(float(kid(x, y + 0.5, subsets=2, subset_size=50, generator=g).mean))
    same_a, shifted_a = np.array(same), np.array(shifted)
    se = same_a.std(ddof=1) / math.sqrt(len(same_a))
    assert abs(same_a.mean()) < 3 * se              # 0 in expectation
    assert (same_a < 0).any()                       # and unbiased, so sometimes below 0
    assert shifted_a.mean() > 10 * shifted_a.std(ddof=1) / math.sqrt(len(shifted_a))
    assert shifted_a.mean() > 20 * se


def test_kid_validation():
    x = torch.randn(10, 3, generator=gen(0))
    with pytest.raises(ValueError, match="subset_size"):
        kid(x, x, subset_size=11)
    with pytest.raises(TypeError):
        kid(x, x, subsets=1.5)
    one = kid(x, x, subsets=1)                       # default subset size min(1000, n, m)
    assert math.isnan(float(one.std)) and one.values.shape == (1,)


def test_noise_floor_of_the_feature_metrics_real_vs_real():
    # held-out "real" features; noise_floor draws two independent sets from them
    g = gen(6)
    feats = torch.randn(2000, 8, generator=g, dtype=F64) * torch.linspace(0.5, 2, 8, dtype=F64)

    def sampler(k: int, gg: torch.Generator) -> torch.Tensor:
        return feats[torch.randint(len(feats), (k,), generator=gg)]

    fd = noise_floor(frechet_distance, sampler, 300, gen(1), repeats=6)
    kf = noise_floor(lambda a, b: kid(a, b, subsets=10, generator=g).mean, sampler, 300, gen(2),
                     repeats=6)
    # FD is biased upward (> 0 between equal distributions); KID is 0 in expectation
    assert fd.mean > 0 and fd.mean > 3 * fd.std / math.sqrt(6)
    assert abs(kf.mean) < 4 * kf.std / math.sqrt(6) + 1e-12
    # a real shift is far above the FD floor
    assert float(frechet_distance(sampler(300, g), sampler(300, g) + 0.5)) > fd.mean + 10 * fd.std


def test_feature_metric_registers_and_scores_flattened_images():
    g = gen(8)
    clf = FeatureClassifier(1, 3, (8, 8), width=8, feature_dim=6, generator=g)
    x = torch.rand(40, 64, generator=g, dtype=F64) * 2 - 1
    y = torch.rand(50, 64, generator=g, dtype=F64) * 2 - 1
    try:
        m = feature_metric("fd", clf.embed)
        assert METRICS["fd"] is m
        assert m(x, y, 0) == pytest.approx(float(frechet_distance(clf.embed(x), clf.embed(y))))
        k = feature_metric("kid", clf.embed, name="kid_cls", subsets=5, subset_size=20)
        want = kid(clf.embed(x), clf.embed(y), subsets=5, subset_size=20, generator=gen(3)).mean
        assert k(x, y, 3) == pytest.approx(float(want))
    finally:
        METRICS.pop("fd", None)
        METRICS.pop("kid_cls", None)
    assert "fd" not in METRICS
    free = feature_metric("fd", clf.embed, register=False)
    assert "fd" not in METRICS and free.name == "fd"
    with pytest.raises(ValueError, match="kind"):
        feature_metric("fid", clf.embed)


# ---------------------------------------------------------------------- feature classifier


def blobs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 8x8 grayscale images: a Gaussian blob at one of three positions
    (jittered by up to ±0.75 pixel), plus pixel noise, in [-1, 1]."""
    centers = torch.tensor([[2.0, 2.0], [2.0, 5.5], [5.5, 3.5]])
    y = torch.randint(0, 3, (n,), generator=g)
    c = centers[y] + (torch.rand(n, 2, generator=g) - 0.5) * 1.5
    i = torch.arange(8.0)
    d2 = (i[None, :, None] - c[:, 0, None, None]) ** 2 + (i[None, None, :] - c[:, 1, None, None]) ** 2
    x = 2 * torch.exp(-d2 / 2.0) - 1 + 0.3 * torch.randn(n, 8, 8, generator=g)
    return x[:, None].clamp(-1, 1), y


@pytest.fixture(scope="module")
def blob_data() -> tuple[torch.Tensor, torch.Tensor]:
    return blobs(600, gen(0))


@pytest.fixture(scope="module")
def cached(blob_data, tmp_path_factory):
    """One cached training (100 steps), shared by the tests below."""
    folder = tmp_path_factory.mktemp("clf")
    x, y = blob_data
    t0 = time.perf_counter()
    res = feature_classifier(x, y, folder, seed=1, steps=100, width=16, batch_size=64)
    return folder, res, time.perf_counter() - t0


def test_classifier_learns_blob_positions(cached, blob_data):
    folder, res, seconds = cached
    assert res.test_accuracy > 0.9
    assert seconds < 30                       # a few seconds on one busy core
    x, _ = blob_data
    f = res.classifier.embed(x[:10])
    assert f.shape == (10, 64) and f.dtype == F64
    # features do not depend on the batch (GroupNorm, no batch statistics)
    np.testing.assert_allclose(res.classifier.embed(x[:3]).numpy(), f[:3].numpy(), rtol=1e-5, atol=1e-5)


def test_classifier_cache_is_reused_and_refused_for_other_data(cached, blob_data, monkeypatch,
                                                                 tmp_path):
    folder, res, _ = cached
    x, y = blob_data
    path = folder / CACHE_NAME
    assert path.is_file()
    mtime = path.stat().st_mtime_ns
    calls = []
    real = features.train_feature_classifier
    monkeypatch.setattr(features, "train_feature_classifier",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    again = feature_classifier(x, y, folder, seed=1, steps=100, width=16, batch_size=64)
    assert calls == [] and path.stat().st_mtime_ns == mtime          # loaded, not trained
    assert again.test_accuracy == res.test_accuracy
    torch.testing.assert_close(again.classifier.embed(x[:20]), res.classifier.embed(x[:20]))
    # another data set, or other options: refused, and the cache is left alone
    with pytest.raises(ValueError, match="other data"):
        feature_classifier(x.flip(-1), y, folder, seed=1, steps=100, width=16, batch_size=64)
    with pytest.raises(ValueError, match="other data"):
        feature_classifier(x[:-1], y[:-1], folder, seed=1, steps=100, width=16, batch_size=64)
    with pytest.raises(ValueError, match="options"):
        feature_classifier(x, y, folder, seed=2, steps=100, width=16, batch_size=64)
    assert calls == [] and path.stat().st_mtime_ns == mtime
    # the same data in float64 is the same data
    assert data_fingerprint(x.double(), y) == data_fingerprint(x, y)
    assert data_fingerprint(x, y) != data_fingerprint(x, (y + 1) % 3)
    # a cache written by another version of the classifier code is refused too
    other = tmp_path / "old"
    ckpt = sd.load_checkpoint(path)
    sd.save_checkpoint({**ckpt, "cache_version": 0}, other / CACHE_NAME)
    with pytest.raises(ValueError, match="another version"):
        feature_classifier(x, y, other, seed=1, steps=100, width=16, batch_size=64)
    # retrain=True replaces it
    small = feature_classifier(x, y, folder, seed=2, steps=2, width=8, batch_size=8, retrain=True)
    assert calls == [1] and path.stat().st_mtime_ns != mtime
    assert small.classifier.width == 8


def test_classifier_shapes_channels_and_determinism():
    g = gen(9)
    rgb = FeatureClassifier(3, 4, (8, 12), width=8, feature_dim=5, generator=g)
    x = torch.randn(6, 3, 8, 12, generator=g)
    assert rgb(x).shape == (6, 4) and rgb.features(x).shape == (6, 5)
    assert rgb.embed(x.reshape(6, -1)).shape == (6, 5)          # flattened rows work too
    big = FeatureClassifier(1, 2, (32, 32), width=8, feature_dim=4, generator=g)
    assert big.features(torch.randn(2, 1, 32, 32, generator=g)).shape == (2, 4)
    with pytest.raises(ValueError, match="shape"):
        rgb(torch.randn(2, 1, 8, 12))
    with pytest.raises(ValueError, match=">= 8"):
        FeatureClassifier(1, 2, (7, 8))
    # the same generator gives the same weights, and the global RNG is not touched
    state = torch.random.get_rng_state()
    a = FeatureClassifier(1, 3, (8, 8), width=8, generator=gen(1))
    b = FeatureClassifier(1, 3, (8, 8), width=8, generator=gen(1))
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    xs, ys = blobs(40, gen(2))
    r1 = train_feature_classifier(xs, ys, generator=gen(3), steps=3, width=8, batch_size=8)
    r2 = train_feature_classifier(xs, ys, generator=gen(3), steps=3, width=8, batch_size=8)
    torch.testing.assert_close(r1.classifier.embed(xs), r2.classifier.embed(xs), rtol=0, atol=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError, match="labels"):
        train_feature_classifier(xs, ys.float(), generator=gen(3), steps=1)
    with pytest.raises(TypeError, match="generator"):
        train_feature_classifier(xs, ys, generator=3, steps=1)


def test_sd_namespace():
    assert sd.metrics.frechet_distance is frechet_distance and sd.metrics.kid is kid
    assert sd.evaluation.features.feature_classifier is feature_classifier
