"""Image outputs: `image_grid`'s exact layout, PNG grids and trajectory GIFs written
atomically and readable by PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import scoresde as sd
from scoresde.evaluation import plots
from scoresde.evaluation.plots import image_grid, save_image_grid, save_trajectory_gif

F64 = torch.float64


def reference_grid(x: torch.Tensor, nrow: int, padding: int, lo: float, hi: float,
                   pad_value: float) -> torch.Tensor:
    """The layout written out with loops: image i at row i // nrow, column i % nrow."""
    b, c, h, w = x.shape
    rows = -(-b // nrow)
    out = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding),
                     pad_value, dtype=F64)
    for i in range(b):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        out[:, top:top + h, left:left + w] = ((x[i] - lo) / (hi - lo)).clamp(0, 1)
    return out


def test_image_grid_exact_on_a_tiny_batch():
    # three 2x2 grayscale images with values -1, 0, 0.5, 3 (3 is clamped to 1)
    x = torch.tensor([[-1.0, 0.0], [0.5, 3.0]], dtype=F64).expand(3, 1, 2, 2).clone()
    x[1] *= -1           # 1, 0, -0.5, -3 (clamped to -1)
    x[2] = 0.0
    g = image_grid(x, nrow=2, padding=1)
    assert g.shape == (1, 7, 7) and g.dtype == F64
    pad = 1.0
    want = torch.full((7, 7), pad, dtype=F64)
    want[1:3, 1:3] = torch.tensor([[0.0, 0.5], [0.75, 1.0]])       # image 0 at row 0, col 0
    want[1:3, 4:6] = torch.tensor([[1.0, 0.5], [0.25, 0.0]])       # image 1 at row 0, col 1
    want[4:6, 1:3] = 0.5                                           # image 2 at row 1, col 0
    torch.testing.assert_close(g[0], want, rtol=0, atol=0)         # row 1, col 1 stays padding
    # padding 0, one row, and another padding value
    g0 = image_grid(x, nrow=3, padding=0, pad_value=0.25)
    assert g0.shape == (1, 2, 6)
    torch.testing.assert_close(g0[0, :, 2:4], torch.tensor([[1.0, 0.5], [0.25, 0.0]], dtype=F64))


@pytest.mark.parametrize("b,c,h,w,nrow,padding", [(7, 3, 3, 5, 3, 2), (4, 1, 4, 4, None, 1),
                                                  (5, 3, 2, 2, 1, 0), (2, 1, 3, 2, 5, 3)])
def test_image_grid_matches_the_loop_layout(b, c, h, w, nrow, padding):
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(b), dtype=F64) * 0.7
    g = image_grid(x, nrow=nrow, padding=padding, value_range=(-1, 1), pad_value=0.3)
    k = nrow if nrow is not None else int(np.ceil(np.sqrt(b)))
    torch.testing.assert_close(g, reference_grid(x, min(k, b), padding, -1, 1, 0.3),
                               rtol=0, atol=0)


def test_image_grid_value_range_dtypes_and_validation():
    x = torch.arange(8, dtype=torch.uint8).reshape(2, 1, 2, 2)
    g = image_grid(x, value_range=(0, 255), padding=0)
    assert g.dtype == torch.get_default_dtype() and float(g.max()) == pytest.approx(7 / 255)
    auto = image_grid(x.double(), value_range=None, padding=0)       # the batch's min and max
    assert float(auto.min()) == 0.0 and float(auto.max()) == 1.0
    with pytest.raises(ValueError, match="C = 1 or 3"):
        image_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="low < high"):
        image_grid(torch.zeros(2, 1, 4, 4), value_range=(1, 1))
    with pytest.raises(ValueError, match="non-finite"):
        image_grid(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(TypeError):
        image_grid(np.zeros((1, 1, 2, 2)))


def test_sd_plots_alias():
    assert sd.plots.image_grid is image_grid
    assert sd.plots.save_trajectory_gif is plots.save_trajectory_gif


def test_save_image_grid_writes_the_grid_as_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 4, 6, generator=g, dtype=F64) * 2 - 1
    path = save_image_grid(x, tmp_path / "sub" / "grid.png", nrow=2, padding=1)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        arr = np.asarray(im)
    grid = image_grid(x, nrow=2, padding=1)
    assert arr.shape == (grid.shape[1], grid.shape[2], 3)
    np.testing.assert_array_equal(arr, np.floor(grid.permute(1, 2, 0).numpy() * 255 + 0.5))
    # grayscale, enlarged 3x
    path = save_image_grid(x[:, :1], tmp_path / "gray.png", nrow=5, padding=0, scale=3)
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (5 * 6 * 3, 4 * 3)
        arr = np.asarray(im)
    np.testing.assert_array_equal(arr[::3, ::3], arr[2::3, 2::3])     # blocks of 3x3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray.png", "sub"]   # no temp files


def test_save_image_grid_is_atomic(tmp_path, monkeypatch):
    path = save_image_grid(torch.zeros(1, 1, 8, 8), tmp_path / "g.png")
    before = path.read_bytes()

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_image_grid(torch.ones(4, 1, 8, 8), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["g.png"]


def gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as im:
        assert im.format == "GIF"
        out = []
        for i in range(im.n_frames):
            im.seek(i)
            out.append(np.asarray(im.convert("RGB")))
    return out


def test_trajectory_gif_from_a_sampling_result(tmp_path):
    # N(0, I) data under the VP-SDE: every marginal is N(0, I), its exact score is -x
    model = sd.ScoreModel.from_score_fn(lambda x, t: -x, sd.VPSDE())
    res = sd.sample(model, (4, 1, 8, 8), solver="ddim", nfe=6, trajectory=True,
                    generator=torch.Generator().manual_seed(0))
    assert res.trajectory.shape[0] == len(res.times) + 1              # denoised appended
    path = save_trajectory_gif(res.trajectory, res.times, tmp_path / "traj.gif", fps=5,
                               size=1.5, dpi=40)
    frames = gif_frames(path)
    assert len(frames) == len(res.trajectory)
    grid = image_grid(res.trajectory[0])                             # square: 2 x 2 images
    assert grid.shape[1] == grid.shape[2] and frames[0].shape == (round(1.9 * 40), 60, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["traj.gif"]


def test_trajectory_gif_subsamples_to_max_frames(tmp_path):
    k = 100
    traj = torch.linspace(-1, 1, k, dtype=F64).reshape(k, 1, 1, 1, 1).expand(k, 1, 3, 8, 8)
    times = torch.linspace(1.0, 1e-3, k, dtype=F64)
    path = save_trajectory_gif(traj, times, tmp_path / "t.gif", max_frames=12, size=1.0, dpi=30)
    frames = gif_frames(path)
    assert len(frames) == 12
    # the first frame shows the state at times[0] (all -1: black), the last at times[-1] (white)
    assert frames[0].shape == (30 + 12, 30, 3)                       # 1 inch + the title band
    centre = 12 + 15, 15
    assert frames[0][centre].max() < 30 and frames[-1][centre].min() > 225
    with pytest.raises(ValueError, match="len\\(times\\)"):
        save_trajectory_gif(traj, times[:50], tmp_path / "bad.gif")
    with pytest.raises(ValueError, match="K, B, C, H, W"):
        save_trajectory_gif(traj[0], times, tmp_path / "bad.gif")
