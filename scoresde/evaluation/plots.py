"""PNG plots (and GIFs) for results people would rather see than read.

Every `plot_*`/`save_*` function takes plain tensors/arrays and a path, writes one PNG (or
GIF) and returns the path; `image_grid` only builds the tiled image, in pure torch. Also
available as `sd.plots` (loaded on first use).
Figures are built with matplotlib's object API (`matplotlib.figure.Figure`), never pyplot,
so importing scoresde neither picks a backend nor disturbs a notebook's inline plotting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from ..files import write_atomic
from ..validation import check_int, check_positive, check_real

__all__ = ["plot_losses", "plot_score_fields", "plot_error_vs_nfe", "plot_sample_grid",
           "plot_trajectories", "plot_samples", "image_grid", "save_image_grid",
           "save_trajectory_gif", "plot_image_sample_grid"]


def _figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4)
            ) -> tuple[Figure, Any]:
    """A pyplot-free figure and its axes array (always 2-d)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_losses(losses: Sequence[float], path: str | os.PathLike, *, window: int = 100,
                title: str = "DSM training loss") -> Path:
    """Per-step loss (faint) and its moving average, log scale."""
    y = np.asarray(losses, dtype=float)
    fig, axes = _figure(figsize=(6, 3.5))
    ax = axes[0][0]
    ax.plot(y, lw=0.5, alpha=0.3, label="per step")
    if len(y) >= window:
        ma = np.convolve(y, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(y)), ma, lw=1.5, label=f"moving average ({window})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_score_fields(fields: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                      path: str | os.PathLike, *, lim: float = 3.0, n: int = 21,
                      title: str = "") -> Path:
    """Quiver plots of 2-D vector fields side by side, e.g. learned vs exact score at a time t.

    ``fields`` maps a panel title to ``fn(points (n*n, 2)) -> vectors (n*n, 2)``.
    """
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    fig, axes = _figure(1, len(fields), figsize=(4.2 * len(fields), 4.2))
    for ax, (name, fn) in zip(axes[0], fields.items(), strict=True):
        with torch.no_grad():
            v = _np(fn(pts))
        mag = np.linalg.norm(v, axis=1)
        ax.quiver(_np(pts[:, 0]), _np(pts[:, 1]), v[:, 0], v[:, 1], mag, cmap="viridis")
        ax.set_title(name)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_samples(x: torch.Tensor, path: str | os.PathLike, *, title: str = "",
                 ref: torch.Tensor | None = None, lim: float | None = None) -> Path:
    """Scatter of 2-D samples (first two coordinates), optionally over reference samples."""
    fig, axes = _figure(figsize=(4.5, 4.5))
    ax = axes[0][0]
    if ref is not None:
        r = _np(ref)
        ax.scatter(r[:, 0], r[:, 1], s=1, alpha=0.25, c="tab:gray", label="target")
    a = _np(x).reshape(len(x), -1)
    ax.scatter(a[:, 0], a[:, 1], s=1, alpha=0.5, c="tab:blue", label="samples")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title)
    return _save(fig, path)


def plot_error_vs_nfe(curves: dict[str, tuple[Sequence[float], ...]],
                      path: str | os.PathLike, *, floor: tuple[float, ...] | None = None,
                      ylabel: str = "error", title: str = "", floor_label: str = "noise floor"
                      ) -> Path:
    """Log-log error vs NFE, one line per solver, with the noise floor drawn.

    ``curves`` maps a label to ``(nfe, err)`` or ``(nfe, err, low, high)``: with ``low`` and
    ``high`` (a confidence interval per point) a shaded band is drawn around the line. More
    than 10 lines take the 20 colours of ``tab20`` (and varying markers).
    ``floor`` is ``(mean, spread)`` (band mean ± spread) or ``(mean, low, high)``.
    """
    fig, axes = _figure(figsize=(7, 4.8))
    ax = axes[0][0]
    tab20 = list(matplotlib.colormaps["tab20"].colors)
    colors = tab20[0::2] + tab20[1::2] if len(curves) > 10 else None   # more than 10 lines
    markers = "os^Dv<>"
    for i, (name, cur) in enumerate(curves.items()):
        nfe_a, err_a = np.asarray(cur[0], float), np.asarray(cur[1], float)
        ok = np.isfinite(err_a) & (err_a > 0)
        if not ok.any():
            continue
        style = {"color": colors[i % len(colors)]} if colors else {}
        (line,) = ax.plot(nfe_a[ok], err_a[ok], marker=markers[i % len(markers)], ms=3,
                          lw=1.2, label=name, **style)
        if len(cur) == 4:
            lo, hi = np.asarray(cur[2], float)[ok], np.asarray(cur[3], float)[ok]
            lo = np.where(np.isfinite(lo) & (lo > 0), lo, err_a[ok] * 0.05)
            ax.fill_between(nfe_a[ok], lo, np.where(np.isfinite(hi), hi, err_a[ok]),
                            color=line.get_color(), alpha=0.08, lw=0)
    if floor is not None and floor[0] > 0:
        if len(floor) == 3:
            lo, hi = floor[1], floor[2]
        else:
            lo, hi = floor[0] - floor[1], floor[0] + floor[1]
        ax.axhline(floor[0], color="k", ls="--", lw=1, label=floor_label)
        ax.axhspan(max(lo, floor[0] * 0.05), hi, color="k", alpha=0.08)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations, denoising included)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_sample_grid(samples: dict[tuple[str, int], torch.Tensor], rows: Sequence[str],
                     cols: Sequence[int], path: str | os.PathLike, *,
                     ref: torch.Tensor | None = None, lim: float = 3.0) -> Path:
    """A grid of 2-D scatter plots: solvers (rows) x budgets (columns); missing cells blank."""
    fig, axes = _figure(len(rows), len(cols), figsize=(1.9 * len(cols), 1.9 * len(rows)))
    r = _np(ref) if ref is not None else None
    for i, name in enumerate(rows):
        for j, b in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            if i == 0:
                ax.set_title(f"NFE {b}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
            x = samples.get((name, b))
            if x is None:
                ax.text(0.5, 0.5, "budget not\nreachable", ha="center", va="center",
                        fontsize=6, transform=ax.transAxes, color="gray")
                continue
            if r is not None:
                ax.scatter(r[:, 0], r[:, 1], s=0.3, c="lightgray")
            a = _np(x)
            ax.scatter(a[:, 0], a[:, 1], s=0.3, alpha=0.6)
    return _save(fig, path)


def plot_trajectories(paths: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      path: str | os.PathLike, *, n_show: int = 60) -> Path:
    """Particle paths in 2-D and the first coordinate against time, one panel per solver.

    ``paths`` maps a title to ``(times (K,), trajectory (K, B, 2))``.
    """
    k = len(paths)
    fig, axes = _figure(2, k, figsize=(3.6 * k, 6.4))
    for j, (name, (times, traj)) in enumerate(paths.items()):
        tr = _np(traj)[:, :n_show]
        ts = _np(times)
        ts = np.concatenate([ts, ts[-1:]]) if len(ts) < tr.shape[0] else ts
        ax = axes[0][j]
        ax.plot(tr[:, :, 0], tr[:, :, 1], lw=0.4, alpha=0.6)
        ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=3, c="k")
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
        ax2 = axes[1][j]
        ax2.plot(ts[: tr.shape[0]], tr[:, :, 0], lw=0.4, alpha=0.6)
        ax2.set_xlabel("t")
        ax2.set_ylabel("x[0]")
        ax2.invert_xaxis()
    return _save(fig, path)



# ------------------------------------------------------------------------------- images


def _check_value_range(value_range: tuple[float, float] | None) -> tuple[float, float] | None:
    if value_range is None:
        return None
    if not (isinstance(value_range, (tuple, list)) and len(value_range) == 2):
        raise TypeError(f"value_range must be a pair (low, high) or None, got {value_range!r}")
    lo, hi = (float(v) for v in value_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must be finite with low < high, got {value_range!r}")
    return lo, hi


def image_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 1,
               value_range: tuple[float, float] | None = (-1.0, 1.0), *,
               pad_value: float = 1.0) -> torch.Tensor:
    """Tile a batch of images into one image, as ``torchvision.utils.make_grid`` lays it out.

    Image ``i`` goes to row ``i // nrow``, column ``i % nrow`` (``nrow`` is capped at ``B``);
    every image is surrounded by ``padding`` pixels of ``pad_value`` (the outer border
    included), so the result has height
    ``rows * (H + padding) + padding`` and width ``nrow * (W + padding) + padding``; cells
    after the last image stay ``pad_value``. Values are mapped linearly from ``value_range``
    to ``[0, 1]`` and clamped (``value_range=None``: the batch's own minimum and maximum).

    **Arguments:**

    - `x`: images ``(B, C, H, W)``, ``C`` = 1 (grayscale) or 3 (RGB), finite.
    - `nrow`: images per row (default ``ceil(sqrt(B))``).
    - `padding`: pixels between images and around the grid (>= 0).
    - `value_range`: the ``(low, high)`` of the data (default ``(-1, 1)``).
    - `pad_value`: the padding's value in ``[0, 1]`` (default 1, white).

    **Returns:** ``(C, H', W')`` tensor in ``[0, 1]`` (``x``'s floating dtype, or the default
    dtype for integer images), on ``x``'s device.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of images (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise ValueError(f"x must have shape (B, C, H, W) with B >= 1 and C = 1 or 3, got "
                         f"{tuple(x.shape)}")
    b, c, h, w = x.shape
    nrow = min(b, int(np.ceil(np.sqrt(b))) if nrow is None else check_int("nrow", nrow, 1))
    padding = check_int("padding", padding, 0)
    pad_value = check_real("pad_value", pad_value, low=0.0, high=1.0)
    rng = _check_value_range(value_range)
    x = x.detach()
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"x has {int((~torch.isfinite(x)).sum())} non-finite values (NaN/Inf)")
    lo, hi = rng if rng is not None else (float(x.min()), float(x.max()))
    x = ((x - lo) / (hi - lo) if hi > lo else torch.full_like(x, 0.5)).clamp(0.0, 1.0)
    rows = -(-b // nrow)
    grid = x.new_full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding),
                      pad_value)
    cells = grid[:, padding:, padding:].unfold(1, h, h + padding).unfold(2, w, w + padding)
    # cells: (C, rows, nrow, H, W), a view into grid (the last row/column of each cell
    # stride skips the padding)
    full = x.new_full((rows * nrow, c, h, w), pad_value)
    full[:b] = x
    cells.copy_(full.reshape(rows, nrow, c, h, w).permute(2, 0, 1, 3, 4))
    return grid


def _to_uint8(grid: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in ``[0, 1]`` -> ``(H, W)`` or ``(H, W, 3)`` uint8, rounding as
    torchvision's ``save_image`` does."""
    a = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))


def save_image_grid(x: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
                    padding: int = 1, value_range: tuple[float, float] | None = (-1.0, 1.0), *,
                    pad_value: float = 1.0, scale: int = 1) -> Path:
    """Write :func:`image_grid` of ``x`` as a PNG (8-bit grayscale or RGB), atomically (a
    temporary file in the same folder, then `os.replace`).

    `scale` enlarges every pixel to ``scale x scale`` pixels (nearest neighbour), for tiny
    images such as 8x8 digits. Other arguments as in :func:`image_grid`.
    **Returns:** the path.
    """
    from PIL import Image

    scale = check_int("scale", scale, 1)
    grid = image_grid(x, nrow, padding, value_range, pad_value=pad_value)
    if scale > 1:
        grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    img = Image.fromarray(_to_uint8(grid))
    return write_atomic(path, lambda tmp: img.save(tmp, format="PNG"))


def save_trajectory_gif(trajectory: torch.Tensor, times: torch.Tensor, path: str | os.PathLike,
                        *, fps: float = 10.0, nrow: int | None = None, max_frames: int = 60,
                        value_range: tuple[float, float] | None = (-1.0, 1.0),
                        padding: int = 1, size: float = 4.0, dpi: int = 100) -> Path:
    """An animated GIF of the reverse process: one frame per stored time, the image grid of
    the batch at that time, with the time in the frame's title.

    Takes a sampling result's ``res.trajectory`` ``(K, B, C, H, W)`` and ``res.times``
    ``(len(times),)`` (from ``sd.sample(..., trajectory=True)``): frame ``k < len(times)``
    is the state at ``times[k]``; when ``K = len(times) + 1`` the last frame is the denoised
    sample (titled "denoised"). At most `max_frames` frames are kept, evenly spaced, the
    first and last always included. Written with matplotlib's `PillowWriter` (frames last
    ``1/fps`` s, the GIF loops), atomically. States outside `value_range` (the noise at
    ``t = T``) are clamped.

    **Arguments:** `trajectory`, `times`, `path` as above; `fps` frames per second; `nrow`,
    `padding`, `value_range` as in :func:`image_grid`; `size` the figure's width in inches
    (its height follows the grid's aspect, plus a band for the title), `dpi` its resolution.

    **Returns:** the path.
    """
    from matplotlib.animation import PillowWriter
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(trajectory, torch.Tensor) or trajectory.ndim != 5:
        got = tuple(trajectory.shape) if isinstance(trajectory, torch.Tensor) else type(trajectory).__name__
        raise ValueError(f"trajectory must be a tensor (K, B, C, H, W) (sample(..., "
                         f"trajectory=True) of images), got {got}")
    ts = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
    k = trajectory.shape[0]
    if k not in (ts.numel(), ts.numel() + 1):
        raise ValueError(f"trajectory has {k} states but times has {ts.numel()} entries; "
                         "expected len(times) or len(times) + 1 (denoised sample appended)")
    fps = check_positive("fps", fps)
    max_frames = check_int("max_frames", max_frames, 2)
    frames = np.unique(np.round(np.linspace(0, k - 1, min(k, max_frames))).astype(int))

    def panel(i: int) -> tuple[np.ndarray, str]:
        grid = image_grid(trajectory[i], nrow, padding, value_range)
        img = grid.double().cpu().numpy()
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        label = (f"t = {float(ts[i]):.4g}" if i < ts.numel()
                 else f"denoised (t = {float(ts[-1]):.4g})")
        return img, label

    img0, label0 = panel(int(frames[0]))
    height = size * img0.shape[0] / img0.shape[1]      # the grid's aspect, plus a title band
    band = 0.4
    fig = Figure(figsize=(size, height + band))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + band)))
    ax.set_axis_off()
    im = ax.imshow(img0, cmap="gray" if img0.ndim == 2 else None, vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    title = fig.suptitle(label0, y=1.0 - 0.5 * band / (height + band), va="center")
    writer = PillowWriter(fps=fps)

    def write(tmp: str) -> None:
        with writer.saving(fig, tmp, dpi):
            for i in frames:
                img, label = panel(int(i))
                im.set_data(img)
                title.set_text(label)
                writer.grab_frame()

    return write_atomic(path, write)


def plot_image_sample_grid(samples: dict[tuple[str, int], torch.Tensor], rows: Sequence[str],
                           cols: Sequence[int], path: str | os.PathLike, *,
                           ref: torch.Tensor | None = None, n_show: int = 16,
                           value_range: tuple[float, float] | None = (-1.0, 1.0)) -> Path:
    """The image counterpart of :func:`plot_sample_grid`: solvers (rows) x budgets (columns),
    each cell the :func:`image_grid` of the first `n_show` images of
    ``samples[(solver, budget)]`` (``(B, C, H, W)``, C = 1 or 3; missing cells say so), and,
    with `ref`, a first column of reference images."""
    n_show = check_int("n_show", n_show, 1)
    extra = 1 if ref is not None else 0
    fig, axes = _figure(len(rows), len(cols) + extra,
                        figsize=(1.7 * (len(cols) + extra), 1.7 * len(rows)))

    def show(ax: Any, x: torch.Tensor) -> None:
        grid = image_grid(x[:n_show], value_range=value_range).double().cpu().numpy()
        img = grid[0] if grid.shape[0] == 1 else grid.transpose(1, 2, 0)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0,
                  interpolation="nearest")

    for i, name in enumerate(rows):
        for j in range(len(cols) + extra):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == extra:
                ax.set_ylabel(name, fontsize=7)
            if j < extra:
                if i == 0:
                    ax.set_title("reference", fontsize=8)
                    show(ax, ref)
                else:
                    ax.set_axis_off()
                continue
            b = cols[j - extra]
            if i == 0:
                ax.set_title(f"NFE {b}", fontsize=8)
            x = samples.get((name, b))
            if x is None:
                ax.text(0.5, 0.5, "budget not\nreachable", ha="center", va="center",
                        fontsize=6, transform=ax.transAxes, color="gray")
                continue
            show(ax, x)
    return _save(fig, path)
