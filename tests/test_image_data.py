"""Image data sets (scoresde.data.images): the loaders on files the tests write themselves,
the quantization (levels <-> model range) against its closed form, the registered digits."""

from __future__ import annotations

import gzip
import struct
import sys

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.data import ImageDataset

# the model-range interval of each scaling, written down independently of the library
RANGES = {"[0,1]": (0.0, 1.0), "[-1,1]": (-1.0, 1.0)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def write_idx(path, arr: np.ndarray, type_code: int, gz: bool = False) -> None:
    """An IDX file by the format's definition: 0, 0, type, ndim, big-endian dims, data."""
    be = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    head = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = head + arr.astype(be[type_code]).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_and_labels_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    imgs[0, 0, 0], imgs[0, 0, 1] = 0, 255
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    ip, lp = tmp_path / ("img.idx.gz" if gz else "img"), tmp_path / ("lab.gz" if gz else "lab")
    write_idx(ip, imgs, 0x08, gz)
    write_idx(lp, labels, 0x08, gz)
    k = sd.data.read_idx(ip)
    assert k.dtype == torch.uint8 and k.shape == (7, 5, 3)
    assert np.array_equal(k.numpy(), imgs)
    ds = sd.data.load_idx(ip, lp)
    assert ds.k.shape == (7, 1, 5, 3) and ds.levels == 256 and ds.scaling == "[-1,1]"
    assert np.array_equal(ds.k[:, 0].numpy(), imgs)
    assert ds.labels.dtype == torch.int64 and np.array_equal(ds.labels.numpy(), labels)
    # the float images are the bin centres 2 (k + 1/2) / 256 - 1
    want = torch.from_numpy(imgs.astype(np.float64))[:, None] * (2 / 256) + (1 / 256 - 1)
    torch.testing.assert_close(ds.images.double(), want, rtol=0, atol=1e-7)
    assert sd.data.load_idx(ip).labels is None


def test_idx_other_types_are_big_endian(tmp_path):
    arr = np.array([[-300, 2], [1000, -1]], dtype=np.int16)
    write_idx(tmp_path / "a", arr, 0x0B)
    out = sd.data.read_idx(tmp_path / "a")
    assert out.dtype == torch.int16 and out.tolist() == arr.tolist()
    f = np.array([1.5, -2.25, 3e10], dtype=np.float64)
    write_idx(tmp_path / "f", f, 0x0E, gz=True)
    assert sd.data.read_idx(tmp_path / "f").tolist() == f.tolist()
    # integer images of another type: levels inferred as max + 1, or declared
    write_idx(tmp_path / "i", np.array([[[0, 3], [16, 2]]], dtype=np.int32), 0x0C)
    assert sd.data.load_idx(tmp_path / "i").levels == 17
    assert sd.data.load_idx(tmp_path / "i", levels=20).levels == 20


def test_idx_refuses_bad_files(tmp_path):
    good = np.zeros((2, 3, 3), dtype=np.uint8)
    write_idx(tmp_path / "ok", good, 0x08)
    raw = (tmp_path / "ok").read_bytes()
    for name, data in {"magic": b"\x01\x02" + raw[2:], "type": raw[:2] + b"\x07" + raw[3:],
                       "ndim0": raw[:3] + b"\x00" + raw[4:], "short": raw[:-1],
                       "long": raw + b"\x00", "empty": b"", "header": raw[:6]}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name if name in ("magic",) else "IDX|bytes|header"):
            sd.data.read_idx(tmp_path / name)
    (tmp_path / "badgz").write_bytes(gzip.compress(raw)[:-8])
    with pytest.raises(ValueError, match="gzip"):
        sd.data.read_idx(tmp_path / "badgz")
    # a labels file that does not match the images
    write_idx(tmp_path / "lab3", np.arange(3, dtype=np.uint8), 0x08)
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        sd.data.load_idx(tmp_path / "ok", tmp_path / "lab3")
    write_idx(tmp_path / "vec", np.arange(4, dtype=np.uint8), 0x08)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        sd.data.load_idx(tmp_path / "vec")


# ----------------------------------------------------------------------------- PNG


def _png(path, arr: np.ndarray, mode: str) -> None:
    from PIL import Image
    Image.fromarray(arr, mode=mode).save(path)


def test_png_folder_with_class_subfolders(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(1)
    want = {}
    for cls, n in (("cat", 2), ("dog", 3)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            a = rng.integers(0, 256, size=(4, 5), dtype=np.uint8)
            _png(tmp_path / cls / f"{i:02d}.png", a, "L")
            want[(cls, i)] = a
    (tmp_path / "empty").mkdir()                       # no PNGs: ignored
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = sd.data.load_png_folder(tmp_path)
    assert ds.k.shape == (5, 1, 4, 5) and ds.levels == 256
    assert ds.classes == ("cat", "dog") and ds.labels.tolist() == [0, 0, 1, 1, 1]
    for j, key in enumerate([("cat", 0), ("cat", 1), ("dog", 0), ("dog", 1), ("dog", 2)]):
        assert np.array_equal(ds.k[j, 0].numpy(), want[key])
    img, lab = ds[3]
    assert img.shape == (1, 4, 5) and int(lab) == 1


def test_png_folder_rgb_sizes_and_modes(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(2)
    rgb = [rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8) for _ in range(2)]
    for i, a in enumerate(rgb):
        _png(tmp_path / f"{i}.png", a, "RGB")
    ds = sd.data.load_png_folder(tmp_path, scaling="[0,1]")
    assert ds.k.shape == (2, 3, 3, 4) and ds.labels is None and ds.scaling == "[0,1]"
    assert np.array_equal(ds.k[1].numpy(), rgb[1].transpose(2, 0, 1))   # channels first
    # mixing grayscale and colour: refused, unless converted
    _png(tmp_path / "2.png", rgb[0][..., 0], "L")
    with pytest.raises(ValueError, match="same size and channels"):
        sd.data.load_png_folder(tmp_path)
    assert sd.data.load_png_folder(tmp_path, mode="L").k.shape == (3, 1, 3, 4)
    # a different size
    other = tmp_path / "sizes"
    other.mkdir()
    _png(other / "a.png", rgb[0], "RGB")
    _png(other / "b.png", rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8), "RGB")
    with pytest.raises(ValueError, match="b.png"):
        sd.data.load_png_folder(other)
    # transparency needs an explicit mode
    alpha = tmp_path / "alpha"
    alpha.mkdir()
    _png(alpha / "a.png", rng.integers(0, 256, size=(2, 2, 4), dtype=np.uint8), "RGBA")
    with pytest.raises(ValueError, match="RGBA"):
        sd.data.load_png_folder(alpha)
    assert sd.data.load_png_folder(alpha, mode="RGB").k.shape == (1, 3, 2, 2)
    # PNG files next to class subfolders, an empty folder, a file
    (tmp_path / "cls").mkdir()
    _png(tmp_path / "cls" / "x.png", rgb[0], "RGB")
    with pytest.raises(ValueError, match="one layout"):
        sd.data.load_png_folder(tmp_path)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no PNG"):
        sd.data.load_png_folder(tmp_path / "none")
    with pytest.raises(ValueError, match="not a folder"):
        sd.data.load_png_folder(tmp_path / "0.png")


# ----------------------------------------------------------------------------- npz


def test_npz_levels_declared_or_inferred(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(6, 3, 2), dtype=np.int64)
    x[0, 0, 0] = 4
    y = np.arange(6) % 2
    np.savez(tmp_path / "a.npz", images=x, labels=y)
    ds = sd.data.load_npz(tmp_path / "a.npz", "images", labels_key="labels")
    assert ds.levels == 5 and ds.k.shape == (6, 1, 3, 2) and ds.labels.tolist() == y.tolist()
    assert np.array_equal(ds.k[:, 0].numpy(), x)
    assert sd.data.load_npz(tmp_path / "a.npz", "images", levels=17).levels == 17
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        sd.data.load_npz(tmp_path / "a.npz", "images", levels=4)
    with pytest.raises(ValueError, match="key="):
        sd.data.load_npz(tmp_path / "a.npz")
    with pytest.raises(ValueError, match="'nope' is not in"):
        sd.data.load_npz(tmp_path / "a.npz", "nope")
    # channels last, a single array, floats refused
    hwc = rng.integers(0, 256, size=(2, 4, 3, 3), dtype=np.uint8)
    np.savez(tmp_path / "b.npz", hwc)
    ds = sd.data.load_npz(tmp_path / "b.npz", channels_last=True, levels=256)
    assert ds.k.shape == (2, 3, 4, 3) and np.array_equal(ds.k.numpy(), hwc.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "c.npz", x=rng.random((2, 3, 3)))
    with pytest.raises(ValueError, match="integer"):
        sd.data.load_npz(tmp_path / "c.npz")


# ----------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("levels", [17, 256])
@pytest.mark.parametrize("scaling", ["[0,1]", "[-1,1]"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scaling_round_trip_is_exact(levels, scaling, dtype):
    k = torch.arange(levels).reshape(1, 1, 1, levels)
    ds = ImageDataset(k, levels=levels, scaling=scaling, dtype=dtype)
    lo, hi = RANGES[scaling]
    width = (hi - lo) / levels
    want = lo + width * (torch.arange(levels, dtype=torch.float64) + 0.5)
    assert ds.images.dtype == dtype
    torch.testing.assert_close(ds.images.double().flatten(), want, rtol=0,
                               atol=1e-12 if dtype == torch.float64 else 1e-6)
    assert torch.equal(ds.to_levels(ds.images), k)                       # k -> x -> k exact
    assert torch.equal(ds.to_model(ds.to_levels(ds.images)), ds.images)
    # model samples outside the range are clipped to the end levels
    assert ds.to_levels(torch.tensor([lo - 5.0, hi + 5.0, hi], dtype=dtype)).tolist() == \
        [0, levels - 1, levels - 1]


@pytest.mark.parametrize("levels", [17, 256])
@pytest.mark.parametrize("scaling", ["[0,1]", "[-1,1]"])
def test_dequantized_values_stay_in_their_bin_and_follow_the_dtype(levels, scaling):
    k = torch.randint(0, levels, (400, 1, 2, 2), generator=gen(0))
    k[0, 0, 0, 0], k[1, 0, 0, 0] = 0, levels - 1
    ds = ImageDataset(k, levels=levels, scaling=scaling, dtype=torch.float64)
    y = ds.dequantize(gen(1))
    assert y.dtype == torch.float64 and ds.dequantize(gen(1), dtype=torch.float32).dtype == \
        torch.float32
    lo, hi = RANGES[scaling]
    width = (hi - lo) / levels
    w = (y - lo) / width                           # the position in level units
    assert bool((w >= k).all() and (w < k + 1).all())
    assert torch.equal(ds.to_levels(y), k)
    # within each bin the draws are uniform: the fractional positions have mean 1/2, var 1/12
    frac = (w - k).flatten()
    assert abs(float(frac.mean()) - 0.5) < 4 * (1 / 12) ** 0.5 / frac.numel() ** 0.5
    assert abs(float(frac.var()) - 1 / 12) < 0.01
    # float32 data: float32 draws, still in [lo, hi]
    y32 = ImageDataset(k, levels=levels, scaling=scaling, dtype=torch.float32).dequantize(gen(1))
    assert y32.dtype == torch.float32 and bool(((y32 >= lo) & (y32 <= hi)).all())
    # dequantization follows a floating k's dtype
    assert sd.uniform_dequantize(k.double(), levels=levels, scaling=scaling).dtype == torch.float64


# ----------------------------------------------------------------------------- ImageDataset


def test_image_dataset_protocol_split_and_sample():
    k = torch.randint(0, 17, (50, 1, 3, 3), generator=gen(2))
    labels = torch.arange(50)                        # unique: they identify the rows
    ds = ImageDataset(k, labels, levels=17)
    assert len(ds) == 50 and ds.event_shape == (1, 3, 3) and ds.k.dtype == torch.uint8
    assert ds.quantization == {"levels": 17, "scaling": "[-1,1]"}
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert x.shape == (8, 1, 3, 3) and torch.equal(x, ds.images[:8]) and y.tolist() == list(range(8))
    # split: deterministic from the seed, disjoint, complete, order kept
    tr, te = ds.split(0.2)
    tr2, te2 = ds.split(0.2, seed=0)
    assert len(te) == 10 and len(tr) == 40
    assert torch.equal(te.labels, te2.labels) and torch.equal(tr.labels, tr2.labels)
    assert sorted(tr.labels.tolist() + te.labels.tolist()) == list(range(50))
    assert tr.labels.tolist() == sorted(tr.labels.tolist())
    assert torch.equal(tr.k, ds.k[tr.labels]) and torch.equal(te.images, ds.images[te.labels])
    _, te_other = ds.split(10, seed=1)
    assert te_other.labels.tolist() != te.labels.tolist()
    _, te_gen = ds.split(10, generator=gen(1))
    assert torch.equal(te_gen.labels, te_other.labels)
    with pytest.raises(ValueError, match="not both"):
        ds.split(10, seed=1, generator=gen(1))
    with pytest.raises(ValueError):
        ds.split(50)
    with pytest.raises(ValueError):
        ds.split(1.0)
    # sample: n = N gives every image once; 2N + 3 gives each two or three times
    small = ImageDataset(torch.arange(6).reshape(6, 1, 1, 1), levels=6)
    s = small.sample(6, gen(3))
    assert sorted(small.to_levels(s).flatten().tolist()) == list(range(6))
    counts = torch.bincount(small.to_levels(small.sample(15, gen(4))).flatten(), minlength=6)
    assert set(counts.tolist()) <= {2, 3} and int(counts.sum()) == 15


def test_image_dataset_refuses_bad_input():
    k = torch.zeros(2, 1, 2, 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="integer"):
        ImageDataset(k.float(), levels=2)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageDataset(k[0], levels=2)
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        ImageDataset(k + 17, levels=17)
    with pytest.raises(ValueError, match="levels"):
        ImageDataset(k, levels=1)
    with pytest.raises(TypeError, match="levels"):
        ImageDataset(k, levels=17.0)
    with pytest.raises(ValueError, match="scaling"):
        ImageDataset(k, levels=17, scaling="[0,255]")
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(k, torch.zeros(3, dtype=torch.int64), levels=17)
    with pytest.raises(TypeError, match="labels"):
        ImageDataset(k, torch.zeros(2), levels=17)


# ----------------------------------------------------------------------------- digits


def test_digits():
    pytest.importorskip("sklearn")
    ds = sd.data.load_digits()
    assert len(ds) == 1797 and ds.k.shape == (1797, 1, 8, 8) and ds.levels == 17
    assert int(ds.k.min()) == 0 and int(ds.k.max()) == 16
    assert ds.labels.shape == (1797,) and sorted(set(ds.labels.tolist())) == list(range(10))
    assert ds.classes == tuple(str(i) for i in range(10))
    # values on the grid 2 (k + 1/2)/17 - 1, and back
    torch.testing.assert_close(ds.images.double(), (2 * ds.k.double() + 1) / 17 - 1,
                               rtol=0, atol=1e-6)
    assert torch.equal(ds.to_levels(ds.images), ds.k.long())
    d01 = sd.data.load_digits(scaling="[0,1]", dtype=torch.float64)
    torch.testing.assert_close(d01.images, (ds.k.double() + 0.5) / 17, rtol=0, atol=1e-15)
    # the same grey levels as scikit-learn's own array
    from sklearn.datasets import load_digits
    assert np.array_equal(ds.k[:, 0].numpy(), load_digits().images.astype(np.uint8))


def test_digits_in_the_registry():
    pytest.importorskip("sklearn")
    assert isinstance(sd.data.DATASETS["digits"], sd.data.ImageSource)
    train = sd.data.load_dataset("digits")
    test = sd.data.load_dataset("digits", "test")
    whole = sd.data.load_dataset("digits", "all")
    assert len(train) == 1797 - sd.data.DIGITS_N_TEST and len(test) == sd.data.DIGITS_N_TEST
    # disjoint and complete: the two splits' rows are the whole set's rows (as multisets)
    rows = lambda d: sorted(bytes(r.numpy()) for r in d.k.reshape(len(d), -1))  # noqa: E731
    assert rows(whole) == sorted(rows(train) + rows(test))
    assert torch.equal(sd.data.load_dataset("digits").k, train.k)         # the same every time
    x = sd.data.sample_toy("digits", 2000, generator=gen(5))
    assert x.shape == (2000, 1, 8, 8) and x.dtype == torch.get_default_dtype()
    drawn = {bytes(r.numpy()) for r in train.to_levels(x).to(torch.uint8).reshape(2000, -1)}
    assert drawn == set(rows(train))                 # every training image, and only those
    x64 = sd.data.DATASETS["digits"](4, generator=gen(5), dtype=torch.float64, split="test")
    assert x64.dtype == torch.float64
    with pytest.raises(ValueError, match="not a fixed data set"):
        sd.data.load_dataset("moons")
    with pytest.raises(ValueError, match="unknown"):
        sd.data.load_dataset("nope")


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"scoresde\[images\]"):
        sd.data.load_digits()
