"""PNG plots for results people would rather see than read.

Every function takes plain tensors/arrays and a path, writes one PNG and returns the path.
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

__all__ = ["plot_losses", "plot_score_fields", "plot_error_vs_nfe", "plot_sample_grid",
           "plot_trajectories", "plot_samples"]


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

