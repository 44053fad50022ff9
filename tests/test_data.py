"""Tests for scoresde.data: reproducibility, dtypes/devices, exact moments, support."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.data import (
    TOY_DATASETS,
    checkerboard,
    eight_gaussians,
    eight_gaussians_params,
    moons,
    pinwheel,
    rings,
    sample_toy,
    swiss_roll,
)

ALL = ("moons", "swiss_roll", "checkerboard", "eight_gaussians", "rings", "pinwheel")
N_MC = 200_000

# Per-coordinate standard deviations at the default parameters, as documented.
DOCUMENTED_STD = {
    "moons": (1.22, 0.71),
    "swiss_roll": (0.98, 1.02),
    "checkerboard": (1.0, 1.0),
    "eight_gaussians": (1.0, 1.0),
    "rings": (1.0, 1.0),
    "pinwheel": (1.0, 1.0),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_within_mc(estimates: torch.Tensor, target: torch.Tensor | float, name: str) -> None:
    """`estimates` are per-sample values whose mean should equal `target` (5 standard errors)."""
    mean = estimates.mean(0)
    se = estimates.std(0) / math.sqrt(estimates.shape[0])
    err = (mean - target).abs()
    assert torch.all(err <= 5 * se + 1e-12), f"{name}: mean {mean}, target {target}, se {se}"


def test_registry_names() -> None:
    assert TOY_DATASETS == ALL
    funcs = (moons, swiss_roll, checkerboard, eight_gaussians, rings, pinwheel)
    for name, fn in zip(ALL, funcs, strict=True):
        a = sample_toy(name, 7, generator=gen(3))
        b = fn(7, generator=gen(3))
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ALL)
def test_shape_and_default_dtype(name: str) -> None:
    x = sample_toy(name, 11, generator=gen(0))
    assert x.shape == (11, 2)
    assert x.dtype == torch.get_default_dtype()
    assert x.device.type == "cpu"
    assert torch.isfinite(x).all()
    assert sample_toy(name, 1, generator=gen(0)).shape == (1, 2)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device(name: str, dtype: torch.dtype) -> None:
    x = sample_toy(name, 16, generator=gen(0), dtype=dtype, device="cpu")
    assert x.dtype == dtype and x.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda_output_matches_cpu(name: str) -> None:
    x = sample_toy(name, 64, generator=gen(0), device="cuda")
    assert x.device.type == "cuda"
    torch.testing.assert_close(x.cpu(), sample_toy(name, 64, generator=gen(0)))
    g = torch.Generator(device="cuda").manual_seed(0)
    assert sample_toy(name, 64, generator=g).device.type == "cuda"


@pytest.mark.parametrize("name", ALL)
def test_float32_is_rounded_float64(name: str) -> None:
    x64 = sample_toy(name, 1000, generator=gen(5), dtype=torch.float64)
    x32 = sample_toy(name, 1000, generator=gen(5), dtype=torch.float32)
    assert torch.equal(x32, x64.to(torch.float32))


@pytest.mark.parametrize("name", ALL)
def test_reproducible_and_seed_dependent(name: str) -> None:
    a = sample_toy(name, 500, generator=gen(123))
    b = sample_toy(name, 500, generator=gen(123))
    c = sample_toy(name, 500, generator=gen(124))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # The generator's state advances: two consecutive draws differ.
    g = gen(7)
    assert not torch.allclose(
        sample_toy(name, 500, generator=g), sample_toy(name, 500, generator=g)
    )


@pytest.mark.parametrize("name", ALL)
def test_explicit_generator_leaves_global_rng_alone(name: str) -> None:
    state = torch.random.get_rng_state()
    sample_toy(name, 100, generator=gen(0))
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("name", ALL)
def test_default_scaling(name: str) -> None:
    """Mean 0 and E||x||^2 = 2 exactly in expectation; coordinate stds as documented."""
    x = sample_toy(name, N_MC, generator=gen(2024), dtype=torch.float64)
    assert_within_mc(x, torch.zeros(2, dtype=torch.float64), f"{name} mean")
    assert_within_mc(x.pow(2).sum(1), 2.0, f"{name} E|x|^2")
    std = x.std(0)
    expected = torch.tensor(DOCUMENTED_STD[name], dtype=torch.float64)
    torch.testing.assert_close(std, expected, atol=0.02, rtol=0.0)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("moons", {"noise": 0.0}),
        ("moons", {"noise": 0.4}),
        ("swiss_roll", {"noise": 0.0}),
        ("swiss_roll", {"noise": 2.0}),
        ("checkerboard", {"size": 2}),
        ("checkerboard", {"size": 6}),
        ("rings", {"n_rings": 1, "noise": 0.3}),
        ("rings", {"n_rings": 7, "noise": 0.0}),
        ("pinwheel", {"n_arms": 2, "radial_std": 0.5, "tangential_std": 0.3, "rate": 1.0}),
        ("pinwheel", {"n_arms": 3, "rate": 0.0}),
    ],
)
def test_scaling_holds_for_other_parameters(name: str, params: dict) -> None:
    x = sample_toy(name, N_MC, generator=gen(99), dtype=torch.float64, **params)
    assert_within_mc(x, torch.zeros(2, dtype=torch.float64), f"{name}{params} mean")
    assert_within_mc(x.pow(2).sum(1), 2.0, f"{name}{params} E|x|^2")


def test_checkerboard_support() -> None:
    for size in (2, 4, 8):
        x = checkerboard(50_000, generator=gen(size), size=size, dtype=torch.float64)
        assert x.abs().max() <= math.sqrt(3.0) + 1e-12
        cells = torch.floor((x + math.sqrt(3.0)) * size / (2 * math.sqrt(3.0))).long()
        cells = cells.clamp(0, size - 1)
        assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all(), "point in an empty cell"
        # Every occupied cell is hit about equally often.
        counts = torch.bincount(cells[:, 0] * size + cells[:, 1], minlength=size * size)
        occupied = counts[counts > 0]
        assert occupied.numel() == size * size // 2
        expected = x.shape[0] / occupied.numel()
        assert (occupied - expected).abs().max() < 5 * math.sqrt(expected)


def test_moons_lie_on_two_half_circles_without_noise() -> None:
    x = moons(10_000, generator=gen(1), noise=0.0, dtype=torch.float64)
    s = math.sqrt(2.0 / (21.0 / 16.0 - 1.0 / math.pi))  # documented scale at noise = 0
    c_upper = torch.tensor([-0.5, -0.25], dtype=torch.float64) * s
    c_lower = torch.tensor([0.5, 0.25], dtype=torch.float64) * s
    on_upper = ((x - c_upper).norm(dim=1) - s).abs() < 1e-9
    on_lower = ((x - c_lower).norm(dim=1) - s).abs() < 1e-9
    assert (on_upper | on_lower).all()
    assert (x[on_upper & ~on_lower, 1] >= c_upper[1] - 1e-9).all()
    assert (x[on_lower & ~on_upper, 1] <= c_lower[1] + 1e-9).all()
    assert abs(on_upper.double().mean().item() - 0.5) < 0.03


def test_rings_radii_without_noise() -> None:
    x = rings(20_000, generator=gen(1), n_rings=3, noise=0.0, dtype=torch.float64)
    r = x.norm(dim=1)
    step = r.min()
    k = r / step
    torch.testing.assert_close(k, k.round(), atol=1e-9, rtol=0)
    assert set(k.round().long().tolist()) == {1, 2, 3}
    # E||x||^2 = step^2 * mean(k^2) = 2 exactly, with mean(k^2) = 14/3 for K = 3.
    torch.testing.assert_close(step, torch.tensor(math.sqrt(2.0 / (14.0 / 3.0))).double())


def test_pinwheel_has_n_arms() -> None:
    x = pinwheel(20_000, generator=gen(0), n_arms=4, radial_std=0.0, tangential_std=0.0)
    # Without spread every point sits at radius 1 (scaled), one per arm angle.
    torch.testing.assert_close(x.norm(dim=1), torch.full((20_000,), math.sqrt(2.0)))
    assert torch.unique(torch.round(x * 1e4), dim=0).shape[0] == 4


def test_eight_gaussians_params() -> None:
    w, mu, cov = eight_gaussians_params()
    assert w.shape == (8,) and mu.shape == (8, 2) and cov.shape == (8, 2, 2)
    assert w.dtype == mu.dtype == cov.dtype == torch.float64
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(cov, cov.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(cov) > 0).all()
    torch.testing.assert_close(mu.norm(dim=1), torch.full((8,), 8 / math.sqrt(33), dtype=w.dtype))
    # Defaults: mixture second moment E||x||^2 = radius^2 + 2 std^2 = 2.
    second = (w * (mu.pow(2).sum(1) + cov.diagonal(dim1=-2, dim2=-1).sum(-1))).sum()
    torch.testing.assert_close(second, torch.tensor(2.0, dtype=torch.float64))
    w2, mu2, cov2 = eight_gaussians_params(radius=3.0, std=0.5)
    torch.testing.assert_close(mu2.norm(dim=1), torch.full((8,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(cov2, 0.25 * torch.eye(2, dtype=torch.float64).expand(8, 2, 2))


def mixture_moments(
    w: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    mean = (w[:, None] * mu).sum(0)
    outer = cov + mu[:, :, None] * mu[:, None, :]
    second = (w[:, None, None] * outer).sum(0)
    return mean, second - torch.outer(mean, mean)


@pytest.mark.parametrize("params", [{}, {"radius": 4.0, "std": 0.3}])
def test_eight_gaussians_samples_match_params(params: dict) -> None:
    w, mu, cov = eight_gaussians_params(**params)
    mean, covariance = mixture_moments(w, mu, cov)
    x = sample_toy("eight_gaussians", N_MC, generator=gen(31), dtype=torch.float64, **params)
    assert_within_mc(x, mean, "mean")
    xc = x - mean
    products = (xc[:, :, None] * xc[:, None, :]).reshape(N_MC, 4)
    assert_within_mc(products, covariance.reshape(4), "covariance")
    # Each component is hit with its weight, and within a component the spread is std.
    k = torch.cdist(x, mu).argmin(dim=1)
    freq = torch.bincount(k, minlength=8).double() / N_MC
    assert (freq - w).abs().max() < 5 * math.sqrt(0.125 * 0.875 / N_MC)
    resid = x - mu[k]
    std = cov[0, 0, 0].sqrt()
    torch.testing.assert_close(resid.std(0), torch.stack([std, std]), atol=0.01, rtol=0.01)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError, match="available: moons, swiss_roll, checkerboard"):
        sample_toy("spirals", 10)
    with pytest.raises(TypeError, match="name must be a toy dataset name"):
        sample_toy(3, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, -5, 2.5, True, "10", None, 10.0])
def test_bad_n(n: object) -> None:
    # a wrong type is a TypeError, a wrong value a ValueError (scoresde.validation)
    err = ValueError if isinstance(n, int) and not isinstance(n, bool) else TypeError
    for name in ALL:
        with pytest.raises(err, match="n must be an integer >= 1"):
            sample_toy(name, n)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("moons", {"noise": -0.1}, "noise"),
        ("swiss_roll", {"noise": float("nan")}, "noise"),
        ("checkerboard", {"size": 3}, "size"),
        ("checkerboard", {"size": 0}, "size"),
        ("rings", {"n_rings": 0}, "n_rings"),
        ("pinwheel", {"n_arms": 1}, "n_arms"),
        ("pinwheel", {"rate": -1.0}, "rate"),
        ("eight_gaussians", {"std": 0.0}, "std"),
        ("eight_gaussians", {"radius": -1.0}, "radius"),
    ],
)
def test_bad_parameters(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_toy(name, 10, **params)


def test_bad_dtype_and_unknown_keyword() -> None:
    with pytest.raises(ValueError, match="dtype"):
        moons(10, dtype=torch.int64)
    with pytest.raises(TypeError):
        sample_toy("moons", 10, radius=2.0)
