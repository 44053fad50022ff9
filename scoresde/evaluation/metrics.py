r"""Distances between two sample sets, for comparing samplers against exact target samples.

Every function takes two sample sets ``x`` of shape ``(n, D)`` and ``y`` of shape
``(m, D)`` (rows are samples) and returns a 0-d tensor with the inputs' (promoted)
floating dtype on their device; float64 inputs are computed in float64.

- :func:`sliced_wasserstein` — sliced Wasserstein-$p$ (Rabin et al. 2011;
  Bonneel et al. 2015).
- :func:`mmd` — squared maximum mean discrepancy with an RBF kernel
  (Gretton et al. 2012).
- :func:`energy_distance` — the energy statistic (Székely & Rizzo 2004, 2013).
- :func:`kernel_stein_discrepancy` — squared KSD against a known score, no reference set
  (Liu, Lee & Jordan 2016; Gorham & Mackey 2017).
- :func:`mean_cov_errors` — errors of the sample mean and covariance against exact values.
- :func:`frechet_distance` and :func:`kid` — the Fréchet distance (Heusel et al. 2017) and
  the kernel inception distance (Bińkowski et al. 2018) between *feature* sets, e.g. image
  embeddings of the library's classifier (`scoresde.evaluation.features`);
  :func:`feature_metric` registers them for a feature function. **Not comparable to
  Inception FID/KID.**
- :func:`noise_floor` — the value a metric takes between two *independent exact* sample
  sets of the same size, so that every reported number can stand next to its floor.

**Registry.** `METRICS` holds the sample-set distances the comparison reports (`"sw2"`,
`"mmd"`, `"energy"`, in that order); `register_metric` adds one (docs/extending.md), and
`compare` then reports it with its noise floor, in its tables and plots.

The pairwise metrics (:func:`mmd`, :func:`energy_distance`) sum over all pairs in
row blocks of about ``2**22`` pairs, so memory stays bounded (tens of MiB) for
``n, m`` in the tens of thousands; time is $O((n + m)^2 D)$.

Inputs are validated once: a non-tensor is a ``TypeError``; a tensor that is not 2-D, has
``D = 0``, fewer than 2 rows, non-finite entries, or a ``D``/device that differs between
``x`` and ``y`` is a ``ValueError`` naming the offending shape or value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..validation import check_choice, check_int, check_real

__all__ = [
    "METRICS",
    "Metric",
    "register_metric",
    "NoiseFloor",
    "energy_distance",
    "feature_metric",
    "frechet_distance",
    "gaussian_frechet_distance",
    "kid",
    "KIDResult",
    "kernel_stein_discrepancy",
    "mean_cov_errors",
    "mmd",
    "noise_floor",
    "sliced_wasserstein",
]

# Pairs evaluated per block in the chunked pairwise sums (about 32 MiB in float64).
_BLOCK_PAIRS = 2**22
# Up to this dimension pairwise distances are computed from exact coordinate differences;
# above it via the matrix-product expansion (on centred data), which is much faster there.
_DIRECT_DIST_MAX_DIM = 8
# The median heuristic uses at most this many pooled points.
_MEDIAN_MAX_POINTS = 1000


# ----------------------------------------------------------------------------- validation


def _check_samples(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, D), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (n, D) (one sample per row), got shape "
            f"{tuple(x.shape)}; reshape with {name}.reshape(n, -1) if samples are multi-dimensional"
        )
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples (rows), got shape {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} needs dimension D >= 1, got shape {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        raise ValueError(
            f"{name} must be finite, but {name}[{bad[0]}, {bad[1]}] = {x[bad[0], bad[1]].item()} "
            f"({int((~finite).sum())} non-finite entries in total)"
        )
    return x


def _check_pair(x: object, y: object) -> tuple[Tensor, Tensor]:
    x = _check_samples(x, "x")
    y = _check_samples(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same dimension D, got x.shape={tuple(x.shape)} and "
            f"y.shape={tuple(y.shape)}"
        )
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


# ------------------------------------------------------------------------ sliced Wasserstein


def _draw_directions(n_projections: int, dim: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Unit vectors uniform on the sphere S^{D-1}, shape ``(n_projections, D)``.

    Drawn on the generator's device (in float64, so the directions do not depend on the
    inputs' dtype) and moved to ``like``'s device and dtype.
    """
    device = generator.device if generator is not None else like.device
    z = torch.randn(n_projections, dim, generator=generator, device=device, dtype=torch.float64)
    norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    # A zero Gaussian vector has probability 0; guard anyway so no NaN can appear.
    z = torch.where(norms > 0, z / norms.clamp_min(1e-300), torch.ones_like(z) / math.sqrt(dim))
    return z.to(device=like.device, dtype=like.dtype)


def _quantile_grid(n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The merged breakpoints of two empirical quantile functions.

    The quantile function of ``n`` sorted atoms is ``F^{-1}(u) = x_(i)`` for
    ``u in ((i-1)/n, i/n]``. On the union of the grids ``{i/n}`` and ``{j/m}`` both
    quantile functions are constant on every cell, so ``int_0^1 |F^{-1} - G^{-1}|^p du`` is
    an exact finite sum over at most ``n + m - 1`` cells. Breakpoints are kept as integers
    in units of ``1/(n m)`` so that coinciding breakpoints merge exactly.

    Returns ``(idx_x, idx_y, widths)``: for each cell the index of the sorted ``x`` and
    ``y`` atom and the cell's width (float64, summing to 1).
    """
    kx = torch.arange(1, n + 1, device=device, dtype=torch.int64) * m
    ky = torch.arange(1, m + 1, device=device, dtype=torch.int64) * n
    knots = torch.unique(torch.cat([kx, ky]))  # sorted, right endpoints of the cells
    widths = torch.diff(knots, prepend=knots.new_zeros(1)).to(torch.float64) / (n * m)
    # On the cell (a, b], F^{-1} is x_(ceil(b n / (n m))) = x_(ceil(b / m)) (1-based).
    idx_x = (knots + m - 1) // m - 1
    idx_y = (knots + n - 1) // n - 1
    return idx_x, idx_y, widths


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 256,
    p: float = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Sliced Wasserstein-$p$ distance between the empirical measures of ``x`` and ``y``.

    $$
    \mathrm{SW}_p(\mu, \nu) = \Big( \mathbb{E}_{\theta \sim \mathcal{U}(S^{D-1})}
    W_p^p(\theta_\# \mu, \theta_\# \nu) \Big)^{1/p},
    \qquad
    W_p^p(\theta_\#\mu, \theta_\#\nu) = \int_0^1 |F_\theta^{-1}(u) - G_\theta^{-1}(u)|^p\,du,
    $$
    where $F_\theta^{-1}, G_\theta^{-1}$ are the quantile functions of the projections
    $\theta^\top x_i$ and $\theta^\top y_j$. The expectation over directions is
    a Monte Carlo average over ``n_projections`` unit vectors drawn uniformly on the sphere
    (normalised standard Gaussians) with ``generator``; the 1-D distances are exact for the
    empirical measures (Rabin et al. 2011, "Wasserstein barycenter and its application to
    texture mixing"; Bonneel et al. 2015, "Sliced and Radon Wasserstein barycenters of
    measures").

    **Unequal sizes.** For ``n == m`` the 1-D distance is ``mean_i |x_(i) - y_(i)|^p`` over
    the sorted projections. For ``n != m`` both quantile functions are compared on their
    common quantile grid, the union of the breakpoints ``{i/n}`` and ``{j/m}`` (at most
    ``n + m - 1`` cells); both are step functions, constant on every cell, so the integral
    is an exact weighted sum -- no interpolation error, and the same value as duplicating
    atoms to a common size ``lcm(n, m)``.

    In ``D = 1`` the directions are $\pm 1$ and ``SW_p`` equals ``W_p`` exactly.
    For Gaussians $N(0, I)$ vs $N(\mu, I)$, $W_2 = |\theta^\top\mu|$
    along $\theta$, so $\mathrm{SW}_2^2 = |\mu|^2 / D$.

    **Arguments:**

    - ``x``: samples, shape ``(n, D)``, ``n >= 2``.
    - ``y``: samples, shape ``(m, D)``, ``m >= 2``.
    - ``n_projections``: number of random directions (positive int).
    - ``p``: order, a finite number ``>= 1``.
    - ``generator``: ``torch.Generator`` for the directions (drawn on its device, then moved
      to the data's device); ``None`` uses the global RNG of the data's device.

    **Returns:** 0-d tensor ``SW_p`` (the $p$-th root of the average of
    $W_p^p$ over directions), dtype and device of the inputs.
    """
    x, y = _check_pair(x, y)
    check_int("n_projections", n_projections, 1)
    check_real("p", p, low=1.0)
    n, m = x.shape[0], y.shape[0]
    theta = _draw_directions(n_projections, x.shape[1], x, generator)

    if n != m:
        idx_x, idx_y, widths = _quantile_grid(n, m, x.device)
        widths = widths.to(x.dtype)
    # Projections are sorted per direction in blocks of directions to bound memory; each
    # direction's projections are one contiguous row (sorting along the last dimension is
    # several times faster than along the first).
    per_block = max(1, _BLOCK_PAIRS // (n + m))
    total = x.new_zeros(())
    for start in range(0, n_projections, per_block):
        th = theta[start : start + per_block]  # (L, D)
        px = torch.sort(th @ x.T, dim=1).values  # (L, n)
        py = torch.sort(th @ y.T, dim=1).values  # (L, m)
        if n == m:
            diff = (px - py).abs()
            total = total + diff.pow(p).mean(dim=1).sum()
        else:
            diff = (px[:, idx_x] - py[:, idx_y]).abs()  # (L, cells)
            total = total + (widths[None, :] * diff.pow(p)).sum()
    return (total / n_projections).pow(1.0 / p)


# -------------------------------------------------------------------- pairwise (chunked) sums


def _pairwise_sum(a: Tensor, b: Tensor | None, fn: Callable[[Tensor], Tensor]) -> Tensor:
    r"""``sum_{i,j} fn(|a_i - b_j|)`` over row blocks; ``b=None`` means the within-sample
    sum ``sum_{i != j} fn(|a_i - a_j|)``.

    The within-sample sum visits only the blocks on and above the diagonal (using symmetry,
    half the work) and excludes ``i == j`` by zeroing those terms exactly, so rounding in
    the distance cannot leak in. ``fn`` may modify its argument in place.
    """
    d = a.shape[1]
    mode = "donot_use_mm_for_euclid_dist" if d <= _DIRECT_DIST_MAX_DIM else "use_mm_for_euclid_dist"
    n = a.shape[0]
    m = n if b is None else b.shape[0]
    rows = max(1, _BLOCK_PAIRS // m)
    total = a.new_zeros(())
    for start in range(0, n, rows):
        block = a[start : start + rows]
        if b is not None:
            total = total + fn(torch.cdist(block, b, compute_mode=mode)).sum()
            continue
        k = block.shape[0]
        vals = fn(torch.cdist(block, a[start:], compute_mode=mode))  # (k, n - start)
        r = torch.arange(k, device=a.device)
        vals = vals.index_put((r, r), vals.new_zeros(()))
        # The (k, k) diagonal block holds both (i, j) and (j, i); the rest stands for its
        # mirror image too.
        total = total + vals[:, :k].sum() + 2.0 * vals[:, k:].sum()
    return total


def _centre(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Subtract the pooled mean (the metrics are translation invariant; this only improves
    the accuracy of the matrix-product distance expansion used for large ``D``)."""
    c = torch.cat([x, y]).mean(dim=0)
    return x - c, y - c


def _median_pairwise_distance(z: Tensor) -> Tensor:
    """Median of ``|z_i - z_j|`` over pairs ``i < j`` (the average of the two middle values
    for an even count, as ``numpy.median``), on at most 1000 evenly spaced rows."""
    k = z.shape[0]
    if k > _MEDIAN_MAX_POINTS:
        idx = torch.linspace(0, k - 1, _MEDIAN_MAX_POINTS, device=z.device).round().long()
        z = z[idx]
        k = z.shape[0]
    v = torch.nn.functional.pdist(z)        # |z_i - z_j| for i < j, the same values as cdist
    # numpy's median: the midpoint of the two middle values, by selection (linear time)
    return torch.as_tensor(float(np.median(v.detach().cpu().numpy())), dtype=z.dtype,
                           device=z.device)


def mmd(
    x: Tensor,
    y: Tensor,
    bandwidth: float | Tensor | None = None,
    unbiased: bool = True,
) -> Tensor:
    r"""Squared maximum mean discrepancy with the Gaussian (RBF) kernel.

    Kernel $k(a, b) = \exp(-|a - b|^2 / (2 h^2))$. The unbiased U-statistic
    (Gretton et al. 2012, "A kernel two-sample test", JMLR 13, Lemma 6, eq. 3) is

    $$
    \mathrm{MMD}_u^2 = \frac{1}{n(n-1)} \sum_{i \ne j} k(x_i, x_j)
    + \frac{1}{m(m-1)} \sum_{i \ne j} k(y_i, y_j)
    - \frac{2}{nm} \sum_{i, j} k(x_i, y_j),
    $$
    an unbiased estimate of $\mathrm{MMD}^2$; it **can be slightly negative** when
    the two distributions are equal or close (its mean is then 0), so do not take its
    square root blindly. ``unbiased=False`` gives the biased V-statistic (eq. 5): the
    within-sample sums include ``i == j`` and are divided by ``n^2`` and ``m^2``; it is
    always ``>= 0`` and biased upwards by about ``(1/n + 1/m)``-order terms.

    **Bandwidth.** ``bandwidth=None`` uses the median heuristic (Gretton et al. 2012,
    Sec. 8): ``h`` is the median of the pairwise Euclidean distances ``|z_i - z_j|``,
    ``i < j``, of the pooled sample ``z = cat(x, y)``. When the pooled sample has more than
    1000 points the median is taken on 1000 of them at evenly spaced indices of ``z``
    (deterministic, no RNG; both sets are represented in proportion to their sizes; half a
    million pairs pin the median down to about 1%).
    Note the convention ``2 h^2`` in the kernel: some codes use ``h^2`` instead.

    **Arguments:**

    - ``x``: samples, shape ``(n, D)``, ``n >= 2``.
    - ``y``: samples, shape ``(m, D)``, ``m >= 2``.
    - ``bandwidth``: ``h > 0`` (float or 0-d tensor), or ``None`` for the median heuristic.
    - ``unbiased``: U-statistic (default) or V-statistic.

    **Returns:** 0-d tensor, the squared MMD estimate (dtype and device of the inputs).
    """
    x, y = _check_pair(x, y)
    x, y = _centre(x, y)
    n, m = x.shape[0], y.shape[0]
    if bandwidth is None:
        h = _median_pairwise_distance(torch.cat([x, y]))
        if not bool(h > 0):
            raise ValueError(
                "median heuristic gave bandwidth 0 (more than half of the pooled pairs are "
                "identical points); pass an explicit bandwidth > 0"
            )
    else:
        if isinstance(bandwidth, Tensor):
            if bandwidth.numel() != 1:
                raise ValueError(
                    f"bandwidth must be a scalar, got a tensor of shape {tuple(bandwidth.shape)}"
                )
            hval = float(bandwidth)
        elif isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool):
            hval = float(bandwidth)
        else:
            raise TypeError(f"bandwidth must be a positive number, a 0-d tensor or None, got "
                            f"{type(bandwidth).__name__} {bandwidth!r}")
        if not (math.isfinite(hval) and hval > 0):
            raise ValueError(f"bandwidth must be a finite number > 0 or None, got {bandwidth!r}")
        h = torch.as_tensor(bandwidth, dtype=x.dtype, device=x.device).reshape(())
    neg_inv = -1.0 / (2.0 * h * h)

    def kernel(d: Tensor) -> Tensor:
        if d.requires_grad:
            return torch.exp(d.square() * neg_inv)
        return d.square_().mul_(neg_inv).exp_()  # in place: d is a fresh cdist block

    kxy = _pairwise_sum(x, y, kernel)
    kxx = _pairwise_sum(x, None, kernel)
    kyy = _pairwise_sum(y, None, kernel)
    if unbiased:
        return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy / (n * m)
    # V-statistic: add back the diagonal, k(a, a) = 1.
    return (kxx + n) / (n * n) + (kyy + m) / (m * m) - 2.0 * kxy / (n * m)


def energy_distance(x: Tensor, y: Tensor, unbiased: bool = True) -> Tensor:
    r"""Energy distance (the E-statistic) between the distributions of ``x`` and ``y``.

    $$
    \mathcal{E}(X, Y) = 2\,\mathbb{E}|X - Y| - \mathbb{E}|X - X'| - \mathbb{E}|Y - Y'|,
    $$
    with Euclidean norms (Székely & Rizzo 2004, "Testing for equal distributions in high
    dimension"; 2013, "Energy statistics: a class of statistics based on distances").
    It is $\ge 0$ with equality iff the distributions are equal. Estimated by

    $$
    \hat{\mathcal{E}} = \frac{2}{nm}\sum_{i,j}|x_i - y_j|
    - \frac{1}{n(n-1)}\sum_{i \ne j}|x_i - x_j|
    - \frac{1}{m(m-1)}\sum_{i \ne j}|y_i - y_j|,
    $$
    the unbiased U-statistic (can be slightly negative for equal distributions).
    ``unbiased=False`` divides the within-sample sums by ``n^2`` and ``m^2`` instead (the
    V-statistic, i.e. the energy distance between the two empirical measures, always
    ``>= 0``). This is **not** a distance in the metric sense: in 1-D it equals
    $2\int (F - G)^2$, and ``scipy.stats.energy_distance(u, v)`` returns the square
    root of the V-statistic, ``sqrt(energy_distance(x, y, unbiased=False))``.

    **Arguments:**

    - ``x``: samples, shape ``(n, D)``, ``n >= 2``.
    - ``y``: samples, shape ``(m, D)``, ``m >= 2``.
    - ``unbiased``: U-statistic within-sample means (default) or V-statistic.

    **Returns:** 0-d tensor (dtype and device of the inputs).
    """
    x, y = _check_pair(x, y)
    x, y = _centre(x, y)
    n, m = x.shape[0], y.shape[0]

    def ident(d: Tensor) -> Tensor:
        return d

    dxy = _pairwise_sum(x, y, ident)
    dxx = _pairwise_sum(x, None, ident)
    dyy = _pairwise_sum(y, None, ident)
    nx, ny = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    return 2.0 * dxy / (n * m) - dxx / nx - dyy / ny


# ---------------------------------------------------------------- kernel Stein discrepancy


def kernel_stein_discrepancy(
    x: Tensor,
    score: Tensor | Callable[[Tensor], Tensor],
    kernel: str = "imq",
    bandwidth: float | None = None,
    beta: float = -0.5,
) -> Tensor:
    r"""Squared kernel Stein discrepancy of the samples ``x`` against a density $p$ known
    through its score $s_p = \nabla\log p$: no reference sample set is needed.

    With a base kernel $k$ the Stein kernel is (Liu, Lee & Jordan 2016, "A kernelized Stein
    discrepancy for goodness-of-fit tests", eq. 7; Chwialkowski, Strathmann & Gretton 2016)

    $$
    u_p(x, y) = s_p(x)^\top s_p(y)\,k(x, y) + s_p(x)^\top \nabla_y k(x, y)
    + \nabla_x k(x, y)^\top s_p(y) + \operatorname{tr}\nabla_x\nabla_y k(x, y),
    $$
    and $\mathbb E_{x, y \sim q}\, u_p(x, y) = \mathrm{KSD}^2(q, p) \ge 0$, zero iff $q = p$
    (for these kernels and smooth $p$ with a decaying tail). It is estimated by the
    U-statistic

    $$
    \widehat{\mathrm{KSD}}{}^2 = \frac{1}{n(n-1)} \sum_{i \ne j} u_p(x_i, x_j),
    $$
    unbiased: **its mean is exactly 0 for exact samples** (it can be slightly negative) and
    its spread under $q = p$ shrinks like $1/n$ (that of $\widehat{\mathrm{KSD}}$ like
    $1/\sqrt n$).

    Kernels (with $r = x - y$, $D$ the dimension):

    - ``"imq"`` (default): $k = (c^2 + |r|^2)^\beta$, $\beta \in (-1, 0)$ (default
      $-\tfrac12$), which Gorham & Mackey 2017 ("Measuring sample quality with kernels")
      show detects non-convergence, unlike Gaussian kernels; with $q = c^2 + |r|^2$,
      $u_p = q^\beta s_x^\top s_y - 2\beta q^{\beta-1}(s_x - s_y)^\top r
      - 4\beta(\beta-1) q^{\beta-2}|r|^2 - 2\beta D q^{\beta-1}$.
    - ``"rbf"``: $k = \exp(-|r|^2/(2h^2))$; $u_p = k\,[s_x^\top s_y
      + (s_x - s_y)^\top r / h^2 + D/h^2 - |r|^2/h^4]$.

    The scale ($c$ or $h$) is ``bandwidth``; by default $c = 1$ for IMQ (Gorham & Mackey's
    choice) and, for RBF, $h$ = the median pairwise distance of ``x`` (the median heuristic,
    as in :func:`mmd`).

    **Caveat.** Score-based discrepancies are nearly blind to the *weights* of
    well-separated mixture components (Wenliang & Kanagawa 2020, "Blindness of score-based
    methods to isolated components and mixing proportions"): a sampler that puts the wrong
    mass on separated modes can have a small KSD. Read it with the distances to a reference
    set, not instead of them.

    **Arguments:**

    - ``x``: samples, shape ``(n, D)``, ``n >= 2``.
    - ``score``: $s_p(x)$ as a tensor of the shape of ``x``, or a callable ``x -> score``
      (e.g. ``GaussianMixture.data_score``).
    - ``kernel``: ``"imq"`` or ``"rbf"``; ``bandwidth``: $c$ or $h > 0$, or ``None`` (the
      defaults above);
      ``beta``: the IMQ exponent in $(-1, 0)$.

    **Returns:** 0-d tensor (dtype and device of ``x``).
    """
    x = _check_samples(x, "x")
    if kernel not in ("imq", "rbf"):
        raise ValueError(f"kernel must be 'imq' or 'rbf', got {kernel!r}")
    beta = check_real("beta", beta, low=-1.0, high=0.0, low_open=True, high_open=True)
    s = score(x) if callable(score) else score
    if not isinstance(s, Tensor):
        raise TypeError(f"score must be a tensor or a callable returning one, got {type(s).__name__}")
    if s.shape != x.shape:
        raise ValueError(f"score must have the shape of x {tuple(x.shape)}, got {tuple(s.shape)}")
    s = s.to(dtype=x.dtype, device=x.device)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("score must be finite")
    n, d = x.shape
    if bandwidth is None and kernel == "imq":
        h = torch.ones((), dtype=x.dtype, device=x.device)
    elif bandwidth is None:
        h = _median_pairwise_distance(x)
        if not bool(h > 0):
            raise ValueError("median heuristic gave bandwidth 0; pass an explicit bandwidth > 0")
    else:
        h = torch.as_tensor(check_real("bandwidth", bandwidth, low=0.0, low_open=True),
                            dtype=x.dtype, device=x.device)
    xc = x - x.mean(dim=0)                         # translation invariant; better conditioned
    sx = (s * xc).sum(dim=1)                        # s_i . x_i
    mode = "donot_use_mm_for_euclid_dist" if d <= _DIRECT_DIST_MAX_DIM else "use_mm_for_euclid_dist"
    rows = max(1, (_BLOCK_PAIRS // 4) // n)
    total = x.new_zeros(())
    for start in range(0, n, rows):
        xb, sb = xc[start:start + rows], s[start:start + rows]
        d2 = torch.cdist(xb, xc, compute_mode=mode).square_()          # |r|^2, (k, n)
        # (s_x - s_y).r = s_i.x_i - s_i.x_j - s_j.x_i + s_j.x_j, with one matrix product
        srr = torch.cat([sb, xb], dim=1) @ torch.cat([xc, s], dim=1).T   # s_i.x_j + x_i.s_j
        srr.neg_().add_(sx[start:start + rows, None]).add_(sx[None, :])
        ss = sb @ s.T
        if kernel == "imq":
            q = d2 + h * h
            qb1 = q.rsqrt().div_(q) if beta == -0.5 else q.pow(beta - 1.0)    # q^(beta-1)
            # u = q^b ss - 2b q^(b-1) srr - 4b(b-1) q^(b-2) |r|^2 - 2bD q^(b-1)
            u = ss.mul_(q).sub_(srr, alpha=2.0 * beta)
            u.sub_(d2.div_(q), alpha=4.0 * beta * (beta - 1.0)).sub_(2.0 * beta * d)
            u.mul_(qb1)
        else:
            inv = float(1.0 / (h * h))
            u = ss.add_(srr, alpha=inv).sub_(d2, alpha=inv * inv).add_(d * inv)
            u.mul_(d2.mul_(-0.5 * inv).exp_())
        r = torch.arange(u.shape[0], device=x.device)
        u[r, r + start] = 0.0                       # the U-statistic leaves out i == j
        total = total + u.sum()
    return total / (n * (n - 1))


# ------------------------------------------------------------ feature-space (image) metrics


def _psd_sqrt(s: Tensor) -> Tensor:
    """The symmetric square root of a symmetric PSD matrix, by eigendecomposition (slightly
    negative eigenvalues from rounding are set to 0)."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0.0).sqrt()) @ v.T


def gaussian_frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> Tensor:
    r"""The Fréchet (Wasserstein-2²) distance between $N(\mu_1, \Sigma_1)$ and
    $N(\mu_2, \Sigma_2)$ (Dowson & Landau 1982):

    $$
    d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{Tr}\big(\Sigma_1 + \Sigma_2
    - 2 (\Sigma_1 \Sigma_2)^{1/2}\big).
    $$

    **How the matrix square root is computed.** $\Sigma_1\Sigma_2$ is not symmetric, and a
    general matrix square root (``scipy.linalg.sqrtm``, as in the reference FID code) can
    return complex values or fail for the singular covariances of features (fewer samples
    than dimensions). Only its trace is needed: $\Sigma_1\Sigma_2$ is similar to
    $\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2} = M M^\top$ with
    $M = \Sigma_1^{1/2}\Sigma_2^{1/2}$, so the eigenvalues of $(\Sigma_1\Sigma_2)^{1/2}$ are
    the singular values of $M$, and $\operatorname{Tr}(\Sigma_1\Sigma_2)^{1/2} = \|M\|_*$
    (the nuclear norm). The symmetric square roots $\Sigma_i^{1/2}$ come from `eigh`
    (negative rounding eigenvalues clamped to 0) and the singular values from `svdvals`, all
    in float64: real by construction, defined for singular matrices, symmetric in the two
    arguments, and exactly 0 (to rounding, about $10^{-15}\operatorname{Tr}\Sigma$) for equal
    covariances. Near-zero eigenvalues are the one inherent limit: the square root is not
    Lipschitz at 0, so an eigenvalue known to $\epsilon\|\Sigma\|$ contributes an error of
    order $\sqrt{\epsilon}\,\|\Sigma\|$ whatever the method. A result below 0 from rounding is
    returned as 0.

    **Arguments:** `mean1`, `mean2` of shape ``(D,)``; `cov1`, `cov2` symmetric positive
    semi-definite of shape ``(D, D)``.

    **Returns:** 0-d float64 tensor on the inputs' device.
    """
    m1, m2, c1, c2 = (torch.as_tensor(a).to(torch.float64) for a in (mean1, mean2, cov1, cov2))
    d = m1.shape[0] if m1.ndim == 1 else -1
    if m1.shape != (d,) or m2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"need means of shape (D,) and covariances of shape (D, D) with one D, "
                         f"got {tuple(m1.shape)}, {tuple(c1.shape)}, {tuple(m2.shape)}, "
                         f"{tuple(c2.shape)}")
    for name, a in (("mean1", m1), ("cov1", c1), ("mean2", m2), ("cov2", c2)):
        if not bool(torch.isfinite(a).all()):
            raise ValueError(f"{name} must be finite")
    c1, c2 = (c1 + c1.T) / 2, (c2 + c2.T) / 2
    tr_sqrt = torch.linalg.svdvals(_psd_sqrt(c1) @ _psd_sqrt(c2)).sum()
    fd = (m1 - m2).square().sum() + torch.trace(c1) + torch.trace(c2) - 2.0 * tr_sqrt
    return fd.clamp_min(0.0)


def frechet_distance(x: Tensor, y: Tensor) -> Tensor:
    r"""Fréchet distance between Gaussians fitted to two feature sets (the FD of FID:
    Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local
    Nash equilibrium").

    $$
    \mathrm{FD} = \|\bar x - \bar y\|^2 + \operatorname{Tr}\big(S_x + S_y
    - 2 (S_x S_y)^{1/2}\big),
    $$
    with the sample means and the unbiased sample covariances ($1/(n-1)$, as ``numpy.cov``
    and the reference FID code); see :func:`gaussian_frechet_distance` for the matrix square
    root (float64, nuclear norm of $S_x^{1/2} S_y^{1/2}$).

    **Bias.** The estimate is biased upward: between two independent sets from the *same*
    distribution it is positive, of order $\operatorname{Tr}\Sigma \cdot D / n$, and it
    falls as $n$ grows (Chong & Forsyth 2020, "Effectively unbiased FID and Inception score
    and where to find them"). Compare values only at equal sample sizes, next to the
    real-vs-real floor (:func:`noise_floor`).

    **Features.** For images, ``x`` and ``y`` are embeddings, e.g. of the library's own
    classifier ([`FeatureClassifier.embed`][scoresde.evaluation.features.FeatureClassifier.embed]);
    such values are **not comparable to Inception FID**.

    **Arguments:** ``x`` ``(n, D)`` and ``y`` ``(m, D)``, ``n, m >= 2``.

    **Returns:** 0-d tensor (computed in float64; returned in the inputs' dtype, on their
    device).
    """
    x, y = _check_pair(x, y)
    dtype = x.dtype
    x, y = x.to(torch.float64), y.to(torch.float64)

    def stats(a: Tensor) -> tuple[Tensor, Tensor]:
        mu = a.mean(dim=0)
        ac = a - mu
        return mu, ac.T @ ac / (a.shape[0] - 1)

    return gaussian_frechet_distance(*stats(x), *stats(y)).to(dtype)


class KIDResult(NamedTuple):
    """Result of :func:`kid`: the mean and the standard deviation (``ddof=1``; NaN for one
    subset) of the unbiased MMD² over the subsets, and the values per subset."""

    mean: Tensor
    std: Tensor
    values: Tensor


def kid(
    x: Tensor,
    y: Tensor,
    subsets: int = 100,
    subset_size: int | None = None,
    generator: torch.Generator | None = None,
) -> KIDResult:
    r"""Kernel distance between two feature sets: the KID of Bińkowski et al. 2018
    ("Demystifying MMD GANs").

    The unbiased estimate of the squared MMD with the cubic polynomial kernel
    $k(a, b) = (a^\top b / D + 1)^3$ ($D$ the feature dimension),

    $$
    \widehat{\mathrm{MMD}}{}^2 = \frac{1}{s(s-1)}\sum_{i \ne j} k(x_i, x_j)
    + \frac{1}{s(s-1)}\sum_{i \ne j} k(y_i, y_j) - \frac{2}{s^2}\sum_{i, j} k(x_i, y_j),
    $$
    on ``subsets`` pairs of random subsets of ``s = subset_size`` rows of ``x`` and of ``y``
    (each drawn without replacement, independently, with ``generator``), averaged, as in the
    reference implementation. **Unbiased:** its expectation is exactly 0 when ``x`` and
    ``y`` come from the same distribution (single values can be negative), whatever ``s``;
    no Gaussian assumption. The ``std`` over subsets measures the subsampling spread (the
    subsets overlap, so ``std / sqrt(subsets)`` is not a standard error of the mean).

    **Arguments:**

    - ``x``: features ``(n, D)``; ``y``: features ``(m, D)``.
    - ``subsets``: number of subset pairs (>= 1; default 100).
    - ``subset_size``: ``s``, at most ``min(n, m)``; default ``min(1000, n, m)``.
    - ``generator``: draws the subsets (``None``: the global RNG of the data's device).

    **Returns:** :class:`KIDResult` ``(mean, std, values)``, computed in float64, returned in
    the inputs' dtype on their device.
    """
    x, y = _check_pair(x, y)
    check_int("subsets", subsets, 1)
    n, m = x.shape[0], y.shape[0]
    if subset_size is None:
        s = min(1000, n, m)
    else:
        s = check_int("subset_size", subset_size, 2)
        if s > min(n, m):
            raise ValueError(f"subset_size={s} is larger than the smaller set (n={n}, m={m}); "
                             "pass subset_size <= min(n, m) or None")
    dtype = x.dtype
    x, y = x.to(torch.float64), y.to(torch.float64)
    d = x.shape[1]
    device = generator.device if generator is not None else x.device
    idx_x = torch.stack([torch.randperm(n, generator=generator, device=device)[:s]
                         for _ in range(subsets)]).to(x.device)
    idx_y = torch.stack([torch.randperm(m, generator=generator, device=device)[:s]
                         for _ in range(subsets)]).to(x.device)
    per_chunk = max(1, _BLOCK_PAIRS // (s * s))
    values = []
    for start in range(0, subsets, per_chunk):
        a, b = x[idx_x[start:start + per_chunk]], y[idx_y[start:start + per_chunk]]  # (c, s, D)
        kxx = (a @ a.transpose(1, 2) / d + 1.0).pow_(3)
        kyy = (b @ b.transpose(1, 2) / d + 1.0).pow_(3)
        kxy = (a @ b.transpose(1, 2) / d + 1.0).pow_(3)
        off_x = kxx.sum(dim=(1, 2)) - kxx.diagonal(dim1=1, dim2=2).sum(dim=1)
        off_y = kyy.sum(dim=(1, 2)) - kyy.diagonal(dim1=1, dim2=2).sum(dim=1)
        values.append((off_x + off_y) / (s * (s - 1)) - 2.0 * kxy.mean(dim=(1, 2)))
    vals = torch.cat(values)
    std = vals.std() if subsets > 1 else torch.full((), math.nan, dtype=vals.dtype,
                                                     device=vals.device)
    return KIDResult(mean=vals.mean().to(dtype), std=std.to(dtype), values=vals.to(dtype))


# -------------------------------------------------------------------- moments and noise floor


def mean_cov_errors(x: Tensor, mean: Tensor, cov: Tensor) -> dict[str, Tensor]:
    r"""Errors of the sample mean and sample covariance of ``x`` against exact values.

    With $\bar x = \frac1n\sum_i x_i$ and the unbiased sample covariance
    $S = \frac{1}{n-1}\sum_i (x_i - \bar x)(x_i - \bar x)^\top$:

    - ``"mean_error"``: $\|\bar x - \mu\|_2$ (Euclidean);
    - ``"cov_error"``: $\|S - \Sigma\|_F$ (Frobenius);
    - ``"cov_rel_error"``: $\|S - \Sigma\|_F / \|\Sigma\|_F$ (``inf`` if
      $\Sigma = 0$ and $S \ne 0$).

    For exact samples these are of order $\sqrt{\mathrm{tr}\,\Sigma / n}$ and
    $\|\Sigma\|_F \sqrt{2/n}$ -- compare with :func:`noise_floor`.

    **Arguments:**

    - ``x``: samples, shape ``(n, D)``, ``n >= 2``.
    - ``mean``: exact mean, shape ``(D,)``.
    - ``cov``: exact covariance, shape ``(D, D)``.

    **Returns:** dict of 0-d tensors (dtype and device of ``x``).
    """
    x = _check_samples(x, "x")
    d = x.shape[1]
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    cov = torch.as_tensor(cov, dtype=x.dtype, device=x.device)
    if mean.shape != (d,):
        raise ValueError(f"mean must have shape (D,) = ({d},), got {tuple(mean.shape)}")
    if cov.shape != (d, d):
        raise ValueError(f"cov must have shape (D, D) = ({d}, {d}), got {tuple(cov.shape)}")
    if not bool(torch.isfinite(mean).all()) or not bool(torch.isfinite(cov).all()):
        raise ValueError("mean and cov must be finite")
    xbar = x.mean(dim=0)
    xc = x - xbar
    s = xc.T @ xc / (x.shape[0] - 1)
    cov_err = torch.linalg.matrix_norm(s - cov)
    cov_norm = torch.linalg.matrix_norm(cov)
    if bool(cov_norm > 0):
        rel = cov_err / cov_norm
    else:
        rel = torch.where(cov_err > 0, torch.full_like(cov_err, math.inf), cov_err)
    return {
        "mean_error": torch.linalg.vector_norm(xbar - mean),
        "cov_error": cov_err,
        "cov_rel_error": rel,
    }


class NoiseFloor(NamedTuple):
    """Result of :func:`noise_floor`: mean and sample standard deviation (``ddof=1``) of
    the metric over the repeats, and the individual values (float64, CPU)."""

    mean: float
    std: float
    values: Tensor


def noise_floor(
    metric: Callable[[Tensor, Tensor], Tensor],
    sampler: Callable[[int, torch.Generator], Tensor],
    n: int,
    generator: torch.Generator,
    repeats: int = 10,
    m: int | None = None,
    reference_sampler: Callable[[int, torch.Generator], Tensor] | None = None,
) -> NoiseFloor:
    r"""The value of ``metric`` between two independent exact sample sets: its noise floor.

    For ``r = 1..repeats`` draws ``x = sampler(n, generator)`` and
    ``y = sampler(m, generator)`` (``m = n`` by default), independent draws from the same
    target, and evaluates ``metric(x, y)``. A sampler's score
    ``metric(samples, exact)`` at sample size ``n`` is only meaningful next to this floor:
    a value within a few ``std`` of ``mean`` is indistinguishable from exact sampling.

    Metrics that need their own randomness (``sliced_wasserstein``) should be bound to a
    generator, e.g. ``lambda a, b: sliced_wasserstein(a, b, generator=g)``.

    **Arguments:**

    - ``metric``: callable ``(x, y) -> 0-d tensor`` (or float).
    - ``sampler``: callable ``(n, generator) -> Tensor (n, D)`` of exact samples, e.g.
      ``gm.sample``.
    - ``n``: size of the first set (use the size of the sampler's output you compare).
    - ``generator``: ``torch.Generator`` driving ``sampler``.
    - ``repeats``: number of independent pairs, ``>= 2``.
    - ``m``: size of the second set (default ``n``).
    - ``reference_sampler``: draws the second set instead of ``sampler`` (same signature).
      For a fixed data set whose reference sets are held-out images, pass the held-out
      sampler here and a sampler of *other* real images (e.g. the training split) as
      ``sampler``: the floor is then real vs real between disjoint sets, as model samples
      vs held-out images are (two draws from one finite set would share images and
      understate it).

    **Returns:** :class:`NoiseFloor` ``(mean, std, values)``.
    """
    check_int("repeats", repeats, 2)   # two at least, to estimate a std
    m = n if m is None else m
    check_int("n", n, 2)
    check_int("m", m, 2)
    if reference_sampler is not None and not callable(reference_sampler):
        raise TypeError(f"reference_sampler must be callable (n, generator) -> samples, got "
                        f"{type(reference_sampler).__name__}")
    second = sampler if reference_sampler is None else reference_sampler
    vals = []
    for _ in range(repeats):
        x = sampler(n, generator)
        y = second(m, generator)
        vals.append(float(metric(x, y)))
    values = torch.tensor(vals, dtype=torch.float64)
    return NoiseFloor(mean=float(values.mean()), std=float(values.std()), values=values)


# ------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Metric:
    """A distance between a sample set and a reference set, as the comparison uses it.

    - `name`: the registry key (a column of the comparison's tables).
    - `fn(x, y, seed)`: the distance between samples `x` (n, D) and reference `y` (m, D),
      float64 on the CPU; `seed` is an integer for metrics that need randomness (the same
      seed for every run of a comparison, so that runs are scored alike). Lower is better.
    - `title`: a human-readable name for plots and reports.
    """

    name: str
    fn: Callable[[Tensor, Tensor, int], Tensor | float]
    title: str

    def __call__(self, x: Tensor, y: Tensor, seed: int) -> float:
        return float(self.fn(x, y, seed))


METRICS: dict[str, Metric] = {}
"""The sample-set distances the comparison reports, in order, by name."""


def register_metric(name: str, fn: Callable[[Tensor, Tensor, int], Tensor | float], *,
                    title: str | None = None) -> Metric:
    """Register `fn(x, y, seed) -> distance` under `name` (see `Metric`); re-registering a
    name replaces it. **Returns:** the `Metric`."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a metric name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable (x, y, seed) -> distance, got {type(fn).__name__}")
    METRICS[name] = Metric(name, fn, title or name)
    return METRICS[name]


register_metric("sw2", lambda x, y, seed: sliced_wasserstein(
    x, y, generator=torch.Generator().manual_seed(seed)), title="sliced Wasserstein-2")
register_metric("mmd", lambda x, y, seed: mmd(x, y), title="MMD² (RBF, unbiased)")
register_metric("energy", lambda x, y, seed: energy_distance(x, y), title="energy distance")


def feature_metric(
    kind: str,
    featurize: Callable[[Tensor], Tensor],
    *,
    name: str | None = None,
    register: bool = True,
    title: str | None = None,
    subsets: int = 100,
    subset_size: int | None = None,
) -> Metric:
    """A registry metric computed in a feature space: :func:`frechet_distance` (``kind="fd"``)
    or :func:`kid` (``kind="kid"``, its mean) between ``featurize(x)`` and ``featurize(y)``.

    ``fn(x, y, seed)`` embeds the sample set and the reference set (rows are samples,
    flattened images ``(n, C*H*W)`` as the comparison passes them, or images) and compares
    the embeddings (both sets are embedded at every call: a comparison re-embeds its
    reference set per run, cheap for small images); KID draws its subsets from a generator
    seeded with ``seed``. With
    ``register=True`` (default) it is added to :data:`METRICS` under ``name`` (default
    ``kind``), so every later comparison reports it (``METRICS.pop(name)`` removes it).

    Typical use, with the library's classifier of the data set
    ([`feature_classifier`][scoresde.evaluation.features.feature_classifier]):
    ``feature_metric("fd", clf.embed)``. **Not comparable to Inception FID/KID.**

    **Arguments:** `kind` ``"fd"`` or ``"kid"``; `featurize` a callable ``(n, ...) -> (n, F)``
    (e.g. ``FeatureClassifier.embed``); `name` the registry key; `register` whether to add
    it to the registry; `title` for plots; `subsets`, `subset_size` for KID.

    **Returns:** the `Metric`.
    """
    kind = check_choice("kind", kind, ("fd", "kid"))
    if not callable(featurize):
        raise TypeError(f"featurize must be callable (n, ...) -> (n, F), got "
                        f"{type(featurize).__name__}")
    name = kind if name is None else name
    if kind == "fd":
        def fn(x: Tensor, y: Tensor, seed: int) -> Tensor:
            return frechet_distance(featurize(x), featurize(y))
        default_title = "Fréchet distance (classifier features)"
    else:
        check_int("subsets", subsets, 1)

        def fn(x: Tensor, y: Tensor, seed: int) -> Tensor:
            return kid(featurize(x), featurize(y), subsets=subsets, subset_size=subset_size,
                       generator=torch.Generator().manual_seed(seed)).mean
        default_title = "KID (classifier features)"
    if register:
        return register_metric(name, fn, title=title or default_title)
    if not isinstance(name, str) or not name:
        raise TypeError(f"a metric name must be a non-empty string, got {name!r}")
    return Metric(name, fn, title or default_title)
