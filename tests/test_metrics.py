"""Tests for scoresde.metrics: closed forms, estimator identities, noise floors, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from scipy.spatial.distance import pdist

import scoresde as sd
from scoresde.evaluation import metrics
from scoresde.evaluation.metrics import (
    NoiseFloor,
    energy_distance,
    mean_cov_errors,
    mmd,
    noise_floor,
    sliced_wasserstein,
)

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normal(n: int, d: int, g: torch.Generator, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(n, d, generator=g, dtype=dtype)


# --------------------------------------------------------------------- naive references


def naive_energy(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> float:
    n, m = len(x), len(y)
    dxy = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").sum()
    dxx = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").sum()
    dyy = torch.cdist(y, y, compute_mode="donot_use_mm_for_euclid_dist").sum()
    nx, ny = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    return float(2 * dxy / (n * m) - dxx / nx - dyy / ny)


def naive_mmd(x: torch.Tensor, y: torch.Tensor, h: float, unbiased: bool) -> float:
    def k(a, b):
        d2 = (a[:, None, :] - b[None, :, :]).square().sum(-1)
        return torch.exp(-d2 / (2 * h * h))

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    if unbiased:
        kxx = kxx - torch.diag(torch.diag(kxx))
        kyy = kyy - torch.diag(torch.diag(kyy))
        return float(kxx.sum() / (n * (n - 1)) + kyy.sum() / (m * (m - 1)) - 2 * kxy.mean())
    return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())


def gaussian_mmd2(mu: torch.Tensor, h: float) -> float:
    """Exact MMD^2 between N(0, I) and N(mu, I) with k = exp(-|a-b|^2 / (2 h^2)).

    E k(X, X') = (h^2 / (h^2 + 2))^{D/2}, E k(X, Y) = that * exp(-|mu|^2 / (2 (h^2 + 2))).
    """
    d = mu.numel()
    c = (h * h / (h * h + 2)) ** (d / 2)
    return 2 * c * (1 - math.exp(-float(mu.square().sum()) / (2 * (h * h + 2))))


def gaussian_energy_1d(delta: float) -> float:
    """Exact energy distance between N(0, 1) and N(delta, 1) in 1-D.

    X - Y ~ N(-delta, 2): E|X - Y| = 2/sqrt(pi) exp(-delta^2/4) + delta (1 - 2 Phi(-delta/sqrt 2));
    E|X - X'| = E|N(0, 2)| = 2/sqrt(pi).
    """
    phi = 0.5 * math.erfc(delta / 2)  # Phi(-delta / sqrt(2))
    exy = 2 / math.sqrt(math.pi) * math.exp(-delta * delta / 4) + delta * (1 - 2 * phi)
    return 2 * exy - 2 * (2 / math.sqrt(math.pi))


# ----------------------------------------------------------------- sliced Wasserstein


@pytest.mark.parametrize("mu", [(1.0, -2.0), (0.5, 0.0, 1.5, -1.0)])
def test_sw2_gaussian_mean_shift_closed_form(mu):
    """N(0, I) vs N(mu, I): W2 along theta is |theta . mu|, so SW2^2 = |mu|^2 / D."""
    mu = torch.tensor(mu, dtype=F64)
    d = mu.numel()
    g = gen(0)
    x = normal(10_000, d, g)
    y = normal(10_000, d, g) + mu
    sw = sliced_wasserstein(x, y, n_projections=2000, generator=gen(1))
    expected = float(mu.square().sum()) / d
    # Monte Carlo over 2000 directions: relative std of the mean of (theta.mu)^2 <= ~2.5%.
    assert float(sw) ** 2 == pytest.approx(expected, rel=0.08)


def test_sw_1d_scale_closed_form():
    """N(0, 1) vs N(0, s^2) in 1-D: the quantile coupling gives W2 = |1 - s| and
    W1 = |1 - s| E|Z| = |1 - s| sqrt(2/pi); in D = 1, SW_p = W_p exactly."""
    s = 2.5
    g = gen(2)
    x = normal(20_000, 1, g)
    y = s * normal(20_000, 1, g)
    w2 = sliced_wasserstein(x, y, n_projections=4, generator=gen(3))
    w1 = sliced_wasserstein(x, y, n_projections=4, p=1, generator=gen(3))
    assert float(w2) == pytest.approx(abs(1 - s), rel=0.03)
    assert float(w1) == pytest.approx(abs(1 - s) * math.sqrt(2 / math.pi), rel=0.03)


def test_sw_unequal_sizes_exact_quantile_grid():
    # x = {0, 1}, y = {0, 1/2, 1}: |F^-1 - G^-1| = 1/2 on (1/3, 2/3), 0 elsewhere,
    # so W2^2 = (1/3) (1/2)^2 = 1/12 and W1 = 1/6.
    x = torch.tensor([[0.0], [1.0]], dtype=F64)
    y = torch.tensor([[0.0], [0.5], [1.0]], dtype=F64)
    assert float(sliced_wasserstein(x, y, generator=gen(0))) ** 2 == pytest.approx(1 / 12)
    assert float(sliced_wasserstein(x, y, p=1, generator=gen(0))) == pytest.approx(1 / 6)


def test_sw_1d_matches_scipy_wasserstein_unequal_sizes():
    g = gen(4)
    x = normal(37, 1, g)
    y = 1.7 * normal(53, 1, g) + 0.3
    ours = sliced_wasserstein(x, y, p=1, n_projections=3, generator=gen(5))
    ref = scipy.stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy())
    assert float(ours) == pytest.approx(ref, rel=1e-12)


def test_sw_unequal_sizes_equals_duplicated_atoms():
    """Duplicating every atom leaves the empirical measure unchanged, so the exact
    quantile-grid comparison must give the same value (n = 2 * 30 vs m = 45)."""
    g = gen(6)
    x = normal(30, 3, g)
    y = normal(45, 3, g) + 0.5
    a = sliced_wasserstein(x, y, n_projections=50, generator=gen(7))
    b = sliced_wasserstein(torch.cat([x, x]), y, n_projections=50, generator=gen(7))
    c = sliced_wasserstein(torch.cat([x, x, x]), torch.cat([y, y]), n_projections=50, generator=gen(7))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    torch.testing.assert_close(a, c, rtol=1e-12, atol=0)


def test_sw_generator_reproducible_and_blocked_directions(monkeypatch):
    g = gen(8)
    x = normal(200, 2, g)
    y = normal(300, 2, g) + 1.0
    a = sliced_wasserstein(x, y, n_projections=100, generator=gen(9))
    b = sliced_wasserstein(x, y, n_projections=100, generator=gen(9))
    c = sliced_wasserstein(x, y, n_projections=100, generator=gen(10))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Directions processed in several blocks give the same value.
    monkeypatch.setattr(metrics, "_BLOCK_PAIRS", 7 * (200 + 300))
    d = sliced_wasserstein(x, y, n_projections=100, generator=gen(9))
    torch.testing.assert_close(a, d, rtol=1e-12, atol=0)
    assert torch.isfinite(sliced_wasserstein(x, y, n_projections=10))  # global RNG


# ------------------------------------------------------------------ MMD / energy distance


def test_mmd_gaussian_closed_form():
    mu = torch.tensor([1.0, 0.5], dtype=F64)
    g = gen(11)
    x = normal(10_000, 2, g)
    y = normal(10_000, 2, g) + mu
    h = 1.3
    val = mmd(x, y, bandwidth=h)
    # Std of the U-statistic here is ~0.0043 (0.0068 at n = 4000, measured over 20 seeds,
    # scaled by 1/sqrt(n)); the exact value is 0.1427. Allow ~3 std.
    assert float(val) == pytest.approx(gaussian_mmd2(mu, h), abs=0.013)


def test_energy_gaussian_closed_form_1d():
    delta = 0.8
    g = gen(12)
    x = normal(20_000, 1, g)
    y = normal(20_000, 1, g) + delta
    val = energy_distance(x, y)
    # Std ~0.0077 (0.015 at n = 5000 over 20 seeds, scaled); the exact value is 0.3518.
    assert float(val) == pytest.approx(gaussian_energy_1d(delta), abs=0.03)


@pytest.mark.parametrize("d", [1, 3, 12])  # 12 > 8 exercises the matrix-product distances
@pytest.mark.parametrize("unbiased", [True, False])
def test_pairwise_metrics_match_naive_and_chunking(monkeypatch, d, unbiased):
    g = gen(13)
    x = normal(41, d, g)
    y = 1.5 * normal(29, d, g) + 0.4
    e_ref = naive_energy(x, y, unbiased)
    m_ref = naive_mmd(x, y, 0.9, unbiased)
    assert float(energy_distance(x, y, unbiased=unbiased)) == pytest.approx(e_ref, rel=1e-10)
    assert float(mmd(x, y, 0.9, unbiased=unbiased)) == pytest.approx(m_ref, rel=1e-10)
    # Tiny blocks: several row blocks of uneven size, symmetric within-sample sums.
    monkeypatch.setattr(metrics, "_BLOCK_PAIRS", 97)
    assert float(energy_distance(x, y, unbiased=unbiased)) == pytest.approx(e_ref, rel=1e-10)
    assert float(mmd(x, y, 0.9, unbiased=unbiased)) == pytest.approx(m_ref, rel=1e-10)


def test_energy_vstatistic_matches_scipy():
    """scipy's energy_distance(u, v) = sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) with V-statistic
    (empirical-measure) means, i.e. sqrt of our unbiased=False value."""
    g = gen(14)
    x = normal(60, 1, g)
    y = 2.0 * normal(45, 1, g) + 0.3
    ref = scipy.stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy())
    assert float(energy_distance(x, y, unbiased=False)) == pytest.approx(ref**2, rel=1e-10)
    # The U-statistic differs from it by the diagonal correction, and is smaller.
    assert float(energy_distance(x, y)) < ref**2


def test_mmd_median_heuristic():
    g = gen(15)
    x = normal(50, 2, g)
    y = normal(70, 2, g) + 1.0
    h = float(np.median(pdist(torch.cat([x, y]).numpy())))
    assert float(mmd(x, y)) == pytest.approx(naive_mmd(x, y, h, True), rel=1e-10)
    # Large pooled samples: 1000 evenly spaced points, deterministic (no RNG).
    big_x, big_y = normal(1500, 2, g), normal(1500, 2, g) + 1.0
    idx = torch.linspace(0, 2999, 1000).round().long()
    sub = torch.cat([big_x, big_y])[idx]
    h_sub = float(np.median(pdist(sub.numpy())))
    assert float(metrics._median_pairwise_distance(torch.cat([big_x, big_y]))) == pytest.approx(
        h_sub, rel=1e-12
    )


def test_mmd_and_energy_grow_monotonically_with_shift():
    g = gen(16)
    x = normal(1500, 2, g)
    y0 = normal(1500, 2, g)
    direction = torch.tensor([0.6, 0.8], dtype=F64)
    shifts = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0]
    m_vals = [float(mmd(x, y0 + s * direction, bandwidth=1.0)) for s in shifts]
    e_vals = [float(energy_distance(x, y0 + s * direction)) for s in shifts]
    assert all(b > a for a, b in zip(m_vals, m_vals[1:], strict=False)), m_vals
    assert all(b > a for a, b in zip(e_vals, e_vals[1:], strict=False)), e_vals
    # And they track the closed form of the MMD.
    for s, v in zip(shifts[2:], m_vals[2:], strict=True):
        assert v == pytest.approx(gaussian_mmd2(s * direction, 1.0), abs=0.01)


# ------------------------------------------------------------------------- noise floor


def gauss_sampler(n: int, g: torch.Generator) -> torch.Tensor:
    return normal(n, 2, g)


def test_identical_distributions_at_noise_floor():
    """Unbiased estimators have mean 0 for equal distributions; the biased V-statistic
    does not (which shows the check can fail)."""
    reps = 24
    for fn in (mmd, energy_distance):
        floor = noise_floor(fn, gauss_sampler, 300, gen(17), repeats=reps)
        assert abs(floor.mean) < 4 * floor.std / math.sqrt(reps), (fn.__name__, floor)
        assert (floor.values < 0).any()  # U-statistics do go negative

    biased = noise_floor(lambda a, b: mmd(a, b, unbiased=False), gauss_sampler, 300, gen(17), repeats=reps)
    assert biased.mean > 4 * biased.std / math.sqrt(reps)
    assert (biased.values > 0).all()

    # SW2 floor is small and shrinks with n; a real shift is far above it.
    gsw = gen(18)

    def sw(a, b):
        return sliced_wasserstein(a, b, n_projections=64, generator=gsw)

    small = noise_floor(sw, gauss_sampler, 250, gen(19), repeats=5)
    large = noise_floor(sw, gauss_sampler, 4000, gen(19), repeats=5)
    assert large.mean < small.mean < 0.2
    shifted = sw(gauss_sampler(4000, gen(20)), gauss_sampler(4000, gen(21)) + 0.5)
    assert float(shifted) > large.mean + 10 * large.std


def test_noise_floor_values():
    calls = []

    def metric(a, b):
        calls.append((a.shape, b.shape))
        return (a.mean() - b.mean()).abs()

    res = noise_floor(metric, gauss_sampler, 10, gen(22), repeats=3, m=7)
    assert isinstance(res, NoiseFloor)
    assert calls == [((10, 2), (7, 2))] * 3
    g = gen(22)
    ref = []
    for _ in range(3):
        a, b = gauss_sampler(10, g), gauss_sampler(7, g)
        ref.append(float((a.mean() - b.mean()).abs()))
    ref = torch.tensor(ref, dtype=F64)
    torch.testing.assert_close(res.values, ref)
    assert res.mean == pytest.approx(float(ref.mean()))
    assert res.std == pytest.approx(float(ref.std()))
    with pytest.raises(ValueError, match="repeats"):
        noise_floor(metric, gauss_sampler, 10, gen(0), repeats=1)
    with pytest.raises(ValueError, match="n must be"):
        noise_floor(metric, gauss_sampler, 1, gen(0))


# ------------------------------------------------------------------ mean / covariance


def test_mean_cov_errors_known_values():
    c = 1.5
    x = c * torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=F64)
    # sample mean 0, unbiased sample covariance (2 c^2 / 3) I
    s = 2 * c * c / 3
    out = mean_cov_errors(x, torch.tensor([3.0, 4.0], dtype=F64), torch.zeros(2, 2, dtype=F64))
    assert float(out["mean_error"]) == pytest.approx(5.0)
    assert float(out["cov_error"]) == pytest.approx(math.sqrt(2) * s)
    assert math.isinf(float(out["cov_rel_error"]))
    out = mean_cov_errors(x, torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    assert float(out["mean_error"]) == 0.0
    assert float(out["cov_error"]) == pytest.approx(math.sqrt(2) * abs(s - 1))
    assert float(out["cov_rel_error"]) == pytest.approx(abs(s - 1))
    assert all(v.dtype == F64 and v.ndim == 0 for v in out.values())
    with pytest.raises(ValueError, match=r"mean must have shape \(D,\) = \(2,\), got \(3,\)"):
        mean_cov_errors(x, torch.zeros(3), torch.eye(2))
    with pytest.raises(ValueError, match="cov must have shape"):
        mean_cov_errors(x, torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="finite"):
        mean_cov_errors(x, torch.tensor([0.0, math.nan]), torch.eye(2))


# ------------------------------------------------------ invariances, dtypes, validation


ALL_METRICS = {
    "sw2": lambda a, b: sliced_wasserstein(a, b, n_projections=32, generator=gen(23)),
    "sw1": lambda a, b: sliced_wasserstein(a, b, n_projections=32, p=1, generator=gen(23)),
    "mmd": lambda a, b: mmd(a, b),
    "mmd_v": lambda a, b: mmd(a, b, bandwidth=0.7, unbiased=False),
    "energy": energy_distance,
}


@pytest.mark.parametrize("name", list(ALL_METRICS))
def test_permutation_invariance_and_symmetry(name):
    f = ALL_METRICS[name]
    g = gen(24)
    x = normal(40, 3, g)
    y = normal(55, 3, g) + 0.3
    v = f(x, y)
    px = x[torch.randperm(40, generator=g)]
    py = y[torch.randperm(55, generator=g)]
    torch.testing.assert_close(f(px, py), v, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(f(y, x), v, rtol=1e-10, atol=1e-14)
    assert float(v) > 0


@pytest.mark.parametrize("name", list(ALL_METRICS))
def test_dtype_and_shape_of_result(name):
    f = ALL_METRICS[name]
    g = gen(25)
    x64, y64 = normal(20, 2, g), normal(25, 2, g)
    out64 = f(x64, y64)
    assert out64.dtype == F64 and out64.shape == () and out64.device == x64.device
    out32 = f(x64.float(), y64.float())
    assert out32.dtype == torch.float32
    assert float(out32) == pytest.approx(float(out64), rel=1e-4, abs=1e-6)
    assert f(x64.float(), y64).dtype == F64  # promoted
    xi = torch.randint(-3, 4, (20, 2), generator=g)
    assert f(xi, xi.flip(0) + 1).dtype == torch.get_default_dtype()


def test_sw_large_unequal_sizes_bounded_work():
    """n, m ~ 20k in D = 2: the exact quantile grid has < n + m cells; runs quickly."""
    g = gen(26)
    x = normal(20_000, 2, g, dtype=torch.float32)
    y = normal(15_000, 2, g, dtype=torch.float32)
    v = sliced_wasserstein(x, y, n_projections=16, generator=gen(27))
    assert 0 <= float(v) < 0.05


BAD = [
    (torch.zeros(5), torch.zeros(5, 2), r"x must be 2-D .* got shape \(5,\)"),
    (torch.zeros(5, 2, 1), torch.zeros(5, 2), r"x must be 2-D .* got shape \(5, 2, 1\)"),
    (torch.zeros(5, 2), torch.zeros(5, 3), r"same dimension D, got x.shape=\(5, 2\) and y.shape"),
    (torch.zeros(1, 2), torch.zeros(5, 2), r"x needs at least 2 samples .* \(1, 2\)"),
    (torch.zeros(5, 2), torch.zeros(1, 2), r"y needs at least 2 samples"),
    (torch.zeros(5, 0), torch.zeros(5, 0), r"D >= 1"),
    (
        torch.zeros(5, 2).index_put_((torch.tensor(3), torch.tensor(1)), torch.tensor(math.nan)),
        torch.zeros(5, 2),
        r"x must be finite, but x\[3, 1\] = nan",
    ),
    (torch.zeros(5, 2), torch.full((4, 2), math.inf), r"y must be finite, but y\[0, 0\] = inf"),
]


@pytest.mark.parametrize("name", list(ALL_METRICS))
@pytest.mark.parametrize(("x", "y", "match"), BAD)
def test_bad_inputs(name, x, y, match):
    with pytest.raises(ValueError, match=match):
        ALL_METRICS[name](x, y)


def test_bad_arguments():
    x = torch.randn(10, 2, generator=gen(28))
    y = x + 1
    with pytest.raises(TypeError, match="torch.Tensor"):
        mmd(np.zeros((5, 2)), y)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n_projections"):
            sliced_wasserstein(x, y, n_projections=bad)
    with pytest.raises(TypeError, match="n_projections"):      # a type error, not a value
        sliced_wasserstein(x, y, n_projections=1.5)
    for bad in (0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="p must be"):
            sliced_wasserstein(x, y, p=bad)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="bandwidth"):
            mmd(x, y, bandwidth=bad)
    with pytest.raises(TypeError, match="bandwidth"):
        mmd(x, y, bandwidth="1")
    with pytest.raises(ValueError, match="bandwidth 0"):
        mmd(torch.zeros(10, 2), torch.zeros(8, 2))
    assert float(mmd(x, y, bandwidth=torch.tensor(1.0))) > 0


# ------------------------------------------------------------------ kernel Stein discrepancy


def _naive_ksd(x: torch.Tensor, s: torch.Tensor, kernel: str, h: float) -> float:
    """The U-statistic of u_p(x, y) = s(x).s(y) k + s(x).grad_y k + grad_x k.s(y) + tr grad_x grad_y k,
    every derivative of the base kernel by autograd."""
    n, d = x.shape
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            a, b = x[i].clone().requires_grad_(True), x[j].clone().requires_grad_(True)
            r2 = (a - b).square().sum()
            k = (h * h + r2) ** -0.5 if kernel == "imq" else torch.exp(-r2 / (2 * h * h))
            ga, gb = torch.autograd.grad(k, (a, b), create_graph=True)
            tr = sum(torch.autograd.grad(ga[m], b, retain_graph=True)[0][m] for m in range(d))
            total += float((s[i] @ s[j] * k + s[i] @ gb + ga @ s[j] + tr).detach())
    return total / (n * (n - 1))


def _mixture():
    return sd.analytic.GaussianMixture.random(3, 2, gen(40), spread=1.5, min_std=0.3, max_std=0.7)


def test_data_score_is_the_gradient_of_log_prob():
    gm = _mixture()
    x = gm.sample(64, gen(41), dtype=F64).requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    assert torch.allclose(gm.data_score(x.detach()), grad, rtol=1e-10, atol=1e-12)
    # VP: sigma(0) = 0, so the marginal score at a tiny t approaches it
    assert torch.allclose(gm.score(x.detach(), 1e-7, sd.VPSDE()), grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_ksd_matches_the_stein_kernel_by_autograd(kernel):
    gm = _mixture()
    x = gm.sample(12, gen(42), dtype=F64) + 0.2
    s = gm.data_score(x)
    got = float(metrics.kernel_stein_discrepancy(x, s, kernel=kernel, bandwidth=0.8))
    assert got == pytest.approx(_naive_ksd(x, s, kernel, 0.8), rel=1e-10)
    # a callable score and blocked evaluation give the same value
    assert float(metrics.kernel_stein_discrepancy(x, gm.data_score, kernel=kernel,
                                                  bandwidth=0.8)) == pytest.approx(got, rel=1e-12)


def test_ksd_is_zero_in_expectation_for_exact_samples_and_grows_with_a_shift(monkeypatch):
    from scoresde.evaluation import stats

    gm = _mixture()
    g = gen(43)
    null = [float(metrics.kernel_stein_discrepancy(x, gm.data_score))
            for x in (gm.sample(300, g, dtype=F64) for _ in range(30))]
    ci = stats.t_interval(null, level=0.99)
    assert ci.contains(0.0), ci                    # unbiased: mean 0 under p
    shifted = [float(metrics.kernel_stein_discrepancy(x + delta, gm.data_score))
               for delta, x in zip((0.1, 0.3, 1.0), (gm.sample(300, g, dtype=F64) for _ in range(3)),
                                   strict=True)]
    assert ci.high < shifted[0] < shifted[1] < shifted[2]
    # blocked sums (a tiny block) give the same value
    x = gm.sample(50, g, dtype=F64)
    full = float(metrics.kernel_stein_discrepancy(x, gm.data_score))
    monkeypatch.setattr(metrics, "_BLOCK_PAIRS", 4 * 7 * 50)
    assert float(metrics.kernel_stein_discrepancy(x, gm.data_score)) == pytest.approx(full, rel=1e-12)


def test_ksd_bad_arguments():
    x = torch.randn(10, 2, generator=gen(44), dtype=F64)
    with pytest.raises(ValueError, match="kernel"):
        metrics.kernel_stein_discrepancy(x, -x, kernel="gauss")
    with pytest.raises(ValueError, match="shape"):
        metrics.kernel_stein_discrepancy(x, -x[:5])
    with pytest.raises(TypeError, match="score"):
        metrics.kernel_stein_discrepancy(x, "grad")
    with pytest.raises(ValueError, match="beta"):
        metrics.kernel_stein_discrepancy(x, -x, beta=-1.5)
    with pytest.raises(ValueError, match="bandwidth"):
        metrics.kernel_stein_discrepancy(x, -x, bandwidth=0.0)
