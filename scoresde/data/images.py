r"""Image data sets: discrete images with their quantization, loaders, and the registered
``"digits"``.

An [`ImageDataset`][scoresde.data.images.ImageDataset] holds images as **integers**
$k \in \{0, \dots, L-1\}$ per pixel (`ds.k`, shape `(N, C, H, W)`, $L$ = `ds.levels`:
17 for scikit-learn's 8x8 digits, 256 for 8-bit images such as MNIST) together with the
**scaling** that maps them into the model's range, the convention of
[`scoresde.likelihood.bpd`][scoresde.likelihood.bpd]: the model sees $y = a\,w + b$
for $w \in [0, L)$, one unit-width bin $[k, k+1)$ per level, with $(a, b) = (1/L, 0)$ for
`"[0,1]"` and $(2/L, -1)$ for `"[-1,1]"` (the default). The float images `ds.images` are
the bin centres $y = a(k + \tfrac12) + b$ ([`level_centers`][scoresde.likelihood.bpd.level_centers]),
so `ds.to_levels(ds.images) == ds.k` exactly; `ds.dequantize(generator)` draws
$y = a(k + u) + b$, $u \sim U[0,1)$ (Theis, van den Oord & Bethge 2016). Because the data
set carries `levels` and `scaling`,
[`image_bits_per_dim(model, ds)`][scoresde.likelihood.bpd.image_bits_per_dim] and
`bits_per_dim(logp, x.shape, **ds.quantization)` know the quantization without it being
repeated.

Loaders (every file format read here is checked, and a malformed file is a `ValueError`
naming it): [`load_digits`][scoresde.data.images.load_digits] (scikit-learn, offline),
[`read_idx`][scoresde.data.images.read_idx] / [`load_idx`][scoresde.data.images.load_idx]
(MNIST, Fashion-MNIST: IDX files, plain or gzip),
[`load_png_folder`][scoresde.data.images.load_png_folder] (PNG files, class subfolders as
labels) and [`load_npz`][scoresde.data.images.load_npz] (NumPy archives).

**Registry.** ``DATASETS["digits"]`` is an [`ImageSource`][scoresde.data.images.ImageSource]:
callable like every entry of the registry, ``fn(n, *, generator, dtype, device) -> (n, 1, 8,
8)`` training images, and with ``.load(split)`` giving the fixed
[`ImageDataset`][scoresde.data.images.ImageDataset] of the training or held-out split
([`load_dataset`][scoresde.data.images.load_dataset] by name).
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..likelihood.bpd import QUANTIZED_SCALINGS, level_centers, quantize, uniform_dequantize
from ..validation import check_choice, check_generator, check_int
from .toy import DATASETS, register_dataset

Tensor = torch.Tensor

__all__ = ["ImageDataset", "ImageSource", "SPLITS", "DIGITS_N_TEST", "load_dataset",
           "load_digits", "read_idx", "load_idx", "load_png_folder", "load_npz"]

#: the splits of an `ImageSource`
SPLITS = ("train", "test", "all")

#: held-out images of the registered ``"digits"`` (1797 = 1500 training + 297 held out)
DIGITS_N_TEST = 297

PathLike = str | os.PathLike


def _check_dtype(dtype: object) -> torch.dtype:
    if dtype is None:
        return torch.get_default_dtype()
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def _storage_dtype(levels: int) -> torch.dtype:
    """The smallest integer dtype that holds `0 .. levels - 1`."""
    return torch.uint8 if levels <= 256 else torch.int32 if levels <= 2**31 else torch.int64


# --------------------------------------------------------------------------------------
# the data set


class ImageDataset(Dataset):
    r"""Discrete images with their quantization: a `torch.utils.data.Dataset` whose items are
    `(image, label)` (or `image` without labels), and plain tensors (`images`, `labels`,
    `k`) for code that wants them whole.

    **Arguments:**

    - `k`: integer levels, a tensor of shape `(N, C, H, W)` with values in
      $[0, L-1]$ (any integer dtype; stored in the smallest that fits).
    - `labels`: integer class labels of shape `(N,)` (`None` when unknown).
    - `levels`: $L$, the number of discrete values per pixel in the raw data
      (an int $\ge 2$; any number, not only powers of two).
    - `scaling`: `"[-1,1]"` (default) or `"[0,1]"`, the model's range
      (module docstring; `scoresde.likelihood.bpd`'s convention).
    - `dtype`: of `images` (default `torch.get_default_dtype()`).
    - `classes`: the names of the labels (`classes[i]` names label `i`), optional.
    - `name`: a short description for `repr`.

    **Attributes:** `k`, `labels`, `levels`, `scaling`, `classes`, `name`, and `images`
    $= a(k + \tfrac12) + b$, float `(N, C, H, W)`.
    """

    def __init__(self, k: Tensor, labels: Tensor | None = None, *, levels: int,
                 scaling: str = "[-1,1]", dtype: torch.dtype | None = None,
                 classes: Sequence[str] | None = None, name: str = "images") -> None:
        super().__init__()
        if not isinstance(k, Tensor) or k.is_floating_point() or k.is_complex() \
                or k.dtype == torch.bool:
            what = f"dtype {k.dtype}" if isinstance(k, Tensor) else type(k).__name__
            raise TypeError(f"k must be an integer torch.Tensor of shape (N, C, H, W), got {what}")
        if k.dim() != 4 or k.shape[0] == 0 or k[0].numel() == 0:
            raise ValueError(f"k must have shape (N, C, H, W) with N >= 1, got {tuple(k.shape)}")
        self.levels = check_int("levels", levels, 2)
        self.scaling = check_choice("scaling", scaling, QUANTIZED_SCALINGS)
        lo, hi = int(k.min()), int(k.max())
        if lo < 0 or hi >= self.levels:
            raise ValueError(f"k must lie in [0, {self.levels - 1}] for levels={self.levels}, "
                             f"got values in [{lo}, {hi}]")
        self.k = k.detach().to(_storage_dtype(self.levels)).contiguous()
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.is_floating_point() \
                    or labels.is_complex() or labels.dtype == torch.bool:
                what = f"dtype {labels.dtype}" if isinstance(labels, Tensor) else \
                    type(labels).__name__
                raise TypeError(f"labels must be an integer torch.Tensor of shape (N,), got {what}")
            if labels.shape != (k.shape[0],):
                raise ValueError(f"labels must have shape (N,) = ({k.shape[0]},), got "
                                 f"{tuple(labels.shape)}")
            if bool((labels < 0).any()):
                raise ValueError("labels must be >= 0")
            labels = labels.detach().to(device=self.k.device, dtype=torch.int64)
        self.labels: Tensor | None = labels
        if classes is not None:
            classes = tuple(classes)
            if not all(isinstance(c, str) for c in classes):
                raise TypeError(f"classes must be strings, got {classes!r}")
            if labels is not None and len(classes) <= int(labels.max()):
                raise ValueError(f"classes names {len(classes)} classes but the labels go up to "
                                 f"{int(labels.max())}")
        self.classes: tuple[str, ...] | None = classes
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        self.name = name
        self.images = level_centers(self.k, scaling=self.scaling, levels=self.levels,
                                    dtype=_check_dtype(dtype))

    # ----- the Dataset protocol -----------------------------------------------------
    def __len__(self) -> int:
        return self.k.shape[0]

    def __getitem__(self, i: Any) -> Any:
        if self.labels is None:
            return self.images[i]
        return self.images[i], self.labels[i]

    def __repr__(self) -> str:
        c, h, w = self.event_shape
        lab = "unlabelled" if self.labels is None else \
            f"{len(self.classes) if self.classes else int(self.labels.max()) + 1} classes"
        return (f"ImageDataset({self.name!r}, N={len(self)}, {c}x{h}x{w}, levels={self.levels}, "
                f"scaling={self.scaling!r}, {lab})")

    # ----- shape and quantization ---------------------------------------------------
    @property
    def event_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)`, the shape of one image."""
        return tuple(self.k.shape[1:])  # type: ignore[return-value]

    @property
    def quantization(self) -> dict[str, Any]:
        """`{"levels": L, "scaling": s}`, the keywords that `bits_per_dim`,
        `uniform_dequantize`, `dequantized_bits_per_dim`, `level_centers` and `quantize`
        take: e.g. `sd.bits_per_dim(logp, x.shape, **ds.quantization)`."""
        return {"levels": self.levels, "scaling": self.scaling}

    def to_levels(self, x: Tensor) -> Tensor:
        """Model-range values -> integer levels, `quantize(x, **self.quantization)`
        (int64; exact on `images` and on dequantized values; values outside the range are
        clipped, as for model samples)."""
        return quantize(x, **self.quantization)

    def to_model(self, k: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Integer levels -> model-range bin centres, `level_centers(k, **self.quantization)`
        (default dtype: that of `images`)."""
        return level_centers(k, dtype=dtype or self.images.dtype, **self.quantization)

    def dequantize(self, generator: torch.Generator | None = None, *,
                   dtype: torch.dtype | None = None) -> Tensor:
        """The whole set uniformly dequantized, $y = a(k + u) + b$, $u \\sim U[0,1)$
        (`uniform_dequantize`; default dtype: that of `images`), e.g. for training on
        dequantized data."""
        return uniform_dequantize(self.k, generator=generator, dtype=dtype or self.images.dtype,
                                  **self.quantization)

    # ----- subsets ------------------------------------------------------------------
    def subset(self, index: Tensor | Sequence[int] | slice) -> ImageDataset:
        """The images at `index` (a slice, integer indices or a boolean mask), as a new data
        set with the same quantization, dtype and class names."""
        idx = index if isinstance(index, slice) else torch.as_tensor(index, device=self.k.device)
        labels = None if self.labels is None else self.labels[idx]
        return ImageDataset(self.k[idx], labels, levels=self.levels, scaling=self.scaling,
                            dtype=self.images.dtype, classes=self.classes, name=self.name)

    def split(self, test: float | int = 0.2, *, seed: int | None = None,
              generator: torch.Generator | None = None) -> tuple[ImageDataset, ImageDataset]:
        """A deterministic random split into `(train, held_out)`.

        `test` is the held-out fraction (a float in `(0, 1)`, rounded to a count) or count (an
        int in `[1, N - 1]`). The held-out indices are the first of `torch.randperm(N)` drawn
        from `generator`, or from `torch.Generator().manual_seed(seed)` (default `seed = 0`,
        so the split is the same on every call); both parts keep the original order.
        """
        n = len(self)
        if isinstance(test, bool) or not isinstance(test, (int, float)):
            raise TypeError(f"test must be a fraction (float) or a count (int), got {test!r}")
        if isinstance(test, float):
            if not 0.0 < test < 1.0:
                raise ValueError(f"a held-out fraction must lie in (0, 1), got {test}")
            test = min(max(round(test * n), 1), n - 1)
        if n < 2 or not 1 <= test <= n - 1:
            raise ValueError(f"the held-out count must lie in [1, N - 1] = [1, {n - 1}], got {test}")
        if seed is not None and generator is not None:
            raise ValueError("give a seed or a generator, not both")
        check_generator(generator)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else
                                                      check_int("seed", seed, 0))
        perm = torch.randperm(n, generator=generator, device=generator.device)
        held, train = perm[:test].sort().values, perm[test:].sort().values
        return self.subset(train.to(self.k.device)), self.subset(held.to(self.k.device))

    def sample(self, n: int, generator: torch.Generator | None = None, *,
               dtype: torch.dtype | None = None, device: torch.device | str | None = None
               ) -> Tensor:
        """`n` images (bin centres) drawn at random: row $i$ is uniform over the data set,
        and the rows are drawn without replacement in rounds of `N` (so `n = N` returns
        every image once, shuffled). Returns `(n, C, H, W)` in `dtype` (default: that of
        `images`) on `device` (default: that of the data)."""
        n = check_int("n", n, 1)
        check_generator(generator)
        where = generator.device if generator is not None else torch.device("cpu")
        rounds = [torch.randperm(len(self), generator=generator, device=where)
                  for _ in range(math.ceil(n / len(self)))]
        idx = torch.cat(rounds)[:n].to(self.k.device)
        x = self.images[idx]
        return x.to(dtype=dtype or x.dtype, device=device if device is not None else x.device)


# --------------------------------------------------------------------------------------
# the registry entry


class ImageSource:
    """A fixed image data set as an entry of the data-set registry `DATASETS`.

    Called like every entry, `source(n, *, generator=None, dtype=None, device=None,
    split="train", scaling="[-1,1]")` returns `n` images of the split
    ([`ImageDataset.sample`][scoresde.data.images.ImageDataset.sample]); `source.load(split)`
    returns the split itself as an `ImageDataset` (with its `levels` and `scaling`, for
    bits/dim).

    **Arguments:**

    - `loader`: `loader(scaling=..., dtype=...) -> ImageDataset`, the whole set (e.g.
      [`load_digits`][scoresde.data.images.load_digits]; called on first use, the result is
      kept per `(scaling, dtype)`).
    - `n_test`: held-out images (an int >= 1), split off by `ImageDataset.split(n_test,
      seed=seed)`.
    - `seed`: of that split (default 0).
    - `description`: one line for listings.
    """

    def __init__(self, loader: Callable[..., ImageDataset], *, n_test: int, seed: int = 0,
                 description: str = "") -> None:
        if not callable(loader):
            raise TypeError(f"loader must be callable, got {type(loader).__name__}")
        self.loader = loader
        self.n_test = check_int("n_test", n_test, 1)
        self.seed = check_int("seed", seed, 0)
        self.description = description
        self._cache: dict[tuple[str, str, torch.dtype], ImageDataset] = {}

    def load(self, split: str = "train", *, scaling: str = "[-1,1]",
             dtype: torch.dtype | None = None) -> ImageDataset:
        """The `"train"`, `"test"` (held out) or `"all"` images as an `ImageDataset`."""
        check_choice("split", split, SPLITS)
        check_choice("scaling", scaling, QUANTIZED_SCALINGS)
        dtype = _check_dtype(dtype)
        key = (split, scaling, dtype)
        if key not in self._cache:
            full = self.loader(scaling=scaling, dtype=dtype)
            if not isinstance(full, ImageDataset):
                raise TypeError(f"the loader must return an ImageDataset, got "
                                f"{type(full).__name__}")
            train, test = full.split(self.n_test, seed=self.seed)
            self._cache.update({("all", scaling, dtype): full, ("train", scaling, dtype): train,
                                ("test", scaling, dtype): test})
        return self._cache[key]

    def __call__(self, n: int, *, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 split: str = "train", scaling: str = "[-1,1]") -> Tensor:
        return self.load(split, scaling=scaling, dtype=dtype).sample(n, generator, device=device)

    def __repr__(self) -> str:
        return f"ImageSource({getattr(self.loader, '__name__', self.loader)!r}, n_test={self.n_test})"


def load_dataset(name: str, split: str = "train", *, scaling: str = "[-1,1]",
                 dtype: torch.dtype | None = None) -> ImageDataset:
    """The fixed data set registered as `name` (an `ImageSource` in `DATASETS`, e.g.
    `"digits"`), split `"train"`, `"test"` or `"all"`. A toy distribution (a sampler without
    fixed data, e.g. `"moons"`) is a `ValueError`."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a data set name (a string), got {type(name).__name__}")
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    source = DATASETS[name]
    if not isinstance(source, ImageSource):
        images = [k for k, v in DATASETS.items() if isinstance(v, ImageSource)]
        raise ValueError(f"{name!r} is a sampler of a distribution, not a fixed data set; "
                         f"the registered image data sets are {images}")
    return source.load(split, scaling=scaling, dtype=dtype)


# --------------------------------------------------------------------------------------
# loaders


def load_digits(*, scaling: str = "[-1,1]", dtype: torch.dtype | None = None) -> ImageDataset:
    """scikit-learn's 8x8 handwritten digits (UCI; Alpaydin & Kaynak 1998), shipped with
    scikit-learn (no download): 1797 images of `1 x 8 x 8`, 17 levels (values 0..16),
    labels 0..9.

    **Raises:** `ImportError` without scikit-learn (`pip install scoresde[images]`).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError("load_digits needs scikit-learn: pip install 'scoresde[images]' "
                          "(or pip install scikit-learn)") from e
    d = sk_load_digits()
    k = torch.from_numpy(np.rint(d.images).astype(np.int64)).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    return ImageDataset(k, labels, levels=17, scaling=scaling, dtype=dtype,
                        classes=[str(i) for i in range(10)], name="digits")


# IDX type codes (http://yann.lecun.com/exdb/mnist/): big-endian data
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: PathLike) -> bytes:
    """The file's bytes, gunzipped if it is a gzip file (by its magic bytes, not its name)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{str(path)!r} is a damaged gzip file: {e}") from e
    return raw


def read_idx(path: PathLike) -> Tensor:
    """Read an IDX file (the format of MNIST and Fashion-MNIST), plain or gzip-compressed.

    The header is a magic number — two zero bytes, a type code (`0x08` unsigned byte,
    `0x09` signed byte, `0x0B` int16, `0x0C` int32, `0x0D` float32, `0x0E` float64) and
    the number of dimensions — then each dimension as a big-endian uint32, then the data,
    big-endian, row-major. MNIST's images files start `0x00000803` (`N x 28 x 28` bytes),
    its labels files `0x00000801`.

    **Returns:** a tensor of the stored dtype (`torch.uint8` for MNIST) and shape.

    **Raises:** `ValueError` when the magic number is wrong, or the file is shorter or
    longer than its header says (naming the file); `FileNotFoundError` for a missing file.
    """
    data = _read_bytes(path)
    name = str(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES \
            or data[3] == 0:
        raise ValueError(f"{name!r} is not an IDX file: its magic number is "
                         f"0x{data[:4].hex() or 'empty'} (expected 0x0000TTNN with type "
                         f"TT in {[f'{t:02x}' for t in _IDX_TYPES]} and NN >= 1 dimensions)")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise ValueError(f"{name!r}: truncated IDX header ({len(data)} bytes, {ndim} "
                         f"dimensions need {head})")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    need = math.prod(shape) * dtype.itemsize
    if len(data) - head != need:
        raise ValueError(f"{name!r}: the header says shape {shape} of {dtype.name} "
                         f"({need} bytes) but the file holds {len(data) - head} bytes of data")
    arr = np.frombuffer(data, dtype=dtype, offset=head).reshape(shape)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))


def _levels_of(k: Tensor, levels: int | None, default: int | None, what: str) -> int:
    """`levels` checked against the data, or `default`, or inferred as `max + 1`."""
    if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
        raise ValueError(f"{what} must hold integers (the raw discrete levels), got dtype "
                         f"{k.dtype}")
    if levels is None:
        levels = default if default is not None else max(int(k.max()) + 1, 2)
    return check_int("levels", levels, 2)


def load_idx(images_path: PathLike, labels_path: PathLike | None = None, *,
             levels: int | None = None, scaling: str = "[-1,1]",
             dtype: torch.dtype | None = None, name: str | None = None) -> ImageDataset:
    """Images (and labels) from IDX files, e.g. MNIST's `train-images-idx3-ubyte.gz` and
    `train-labels-idx1-ubyte.gz` (`read_idx`).

    The images file must hold integers of shape `(N, H, W)` (one channel) or
    `(N, C, H, W)`; the labels file integers of shape `(N,)` (a count that differs is a
    `ValueError`). `levels` defaults to 256 for unsigned bytes (8-bit images, the IDX type
    `0x08`); for other integer types declare it, else it is inferred as the largest value
    + 1. `scaling`, `dtype`, `name` as in `ImageDataset` (default name: the file's).
    """
    k = read_idx(images_path)
    if k.dim() == 3:
        k = k.unsqueeze(1)
    if k.dim() != 4:
        raise ValueError(f"{str(images_path)!r} holds shape {tuple(k.shape)}; image files have "
                         "shape (N, H, W) or (N, C, H, W)")
    levels = _levels_of(k, levels, 256 if k.dtype == torch.uint8 else None,
                        f"{str(images_path)!r}")
    labels = None
    if labels_path is not None:
        labels = read_idx(labels_path)
        if labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(f"{str(labels_path)!r} holds {labels.dtype} of shape "
                             f"{tuple(labels.shape)}; a labels file holds integers of shape (N,)")
        if labels.shape[0] != k.shape[0]:
            raise ValueError(f"{str(labels_path)!r} has {labels.shape[0]} labels for "
                             f"{k.shape[0]} images in {str(images_path)!r}")
    return ImageDataset(k.to(torch.int64) if k.dtype != torch.uint8 else k, labels,
                        levels=levels, scaling=scaling, dtype=dtype,
                        name=name or Path(images_path).name)


_PNG_SUFFIX = ".png"


def _png_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == _PNG_SUFFIX)


def load_png_folder(folder: PathLike, *, mode: str | None = None, scaling: str = "[-1,1]",
                    dtype: torch.dtype | None = None, name: str | None = None) -> ImageDataset:
    """8-bit PNG images from a folder (256 levels).

    Either the PNG files lie in `folder` itself (no labels), or in its subfolders, one per
    class: label `i` is the `i`-th subfolder in sorted order, and `classes` holds the
    subfolder names (subfolders without PNG files are ignored; PNG files next to class
    subfolders are a `ValueError`). Files are read in sorted order.

    Grayscale (`"L"`, one channel) and RGB (`"RGB"`, three) images are read as they are
    (a 1-bit image as grayscale 0/255, a palette image as RGB); `mode="L"` or `"RGB"`
    converts every image (use it for images with transparency, which is dropped, or to mix
    grayscale and colour). All images must have the same size and channels, else a
    `ValueError` names the first that differs. Uses Pillow.
    """
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("load_png_folder needs Pillow: pip install pillow") from e
    if mode is not None:
        check_choice("mode", mode, ("L", "RGB"))
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder")
    top = _png_files(root)
    subs = [(d.name, _png_files(d)) for d in sorted(p for p in root.iterdir() if p.is_dir())]
    subs = [(c, files) for c, files in subs if files]
    if top and subs:
        raise ValueError(f"{str(folder)!r} holds PNG files and class subfolders "
                         f"({[c for c, _ in subs]}); use one layout")
    if not top and not subs:
        raise ValueError(f"{str(folder)!r} holds no PNG files (nor subfolders with any)")
    if top:
        files, labels, classes = top, None, None
    else:
        files = [f for _, fs in subs for f in fs]
        labels = torch.tensor([i for i, (_, fs) in enumerate(subs) for _ in fs])
        classes = [c for c, _ in subs]
    arrays, first = [], None
    for f in files:
        with Image.open(f) as img:
            if img.format != "PNG":
                raise ValueError(f"{str(f)!r} is not a PNG file (format {img.format})")
            m = img.mode
            if mode is not None:
                img = img.convert(mode)
            elif m == "1":
                img = img.convert("L")
            elif m == "P":
                img = img.convert("RGB")
            elif m not in ("L", "RGB"):
                raise ValueError(f"{str(f)!r} has mode {m!r}; 8-bit grayscale ('L') and RGB "
                                 "('RGB') are read as they are: pass mode='L' or mode='RGB' to "
                                 "convert")
            a = np.asarray(img, dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if first is None:
            first = (f, a.shape)
        elif a.shape != first[1]:
            raise ValueError(f"{str(f)!r} has shape (C, H, W) = {a.shape} but {str(first[0])!r} "
                             f"has {first[1]}; all images must have the same size and channels "
                             "(mode='L' or 'RGB' converts the channels)")
        arrays.append(a)
    k = torch.from_numpy(np.stack(arrays))
    return ImageDataset(k, labels, levels=256, scaling=scaling, dtype=dtype, classes=classes,
                        name=name or root.name)


def load_npz(path: PathLike, key: str | None = None, *, labels_key: str | None = None,
             levels: int | None = None, scaling: str = "[-1,1]", channels_last: bool = False,
             dtype: torch.dtype | None = None, name: str | None = None) -> ImageDataset:
    """Integer images (and labels) from a NumPy `.npz` archive (read without pickle).

    `key` names the images array (optional when the archive holds one array), of shape
    `(N, H, W)` (one channel), `(N, C, H, W)`, or `(N, H, W, C)` with `channels_last=True`;
    `labels_key` an integer array of shape `(N,)`. `levels`: the number of discrete values
    per pixel; declare it (e.g. 256 for 8-bit images) — else it is inferred as the largest
    value + 1, which is too small when the top level never occurs.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if key is None:
            if len(keys) != 1:
                raise ValueError(f"{str(path)!r} holds arrays {keys}; say which with key=")
            key = keys[0]
        for what, kk in (("key", key), ("labels_key", labels_key)):
            if kk is not None and kk not in keys:
                raise ValueError(f"{what}={kk!r} is not in {str(path)!r}, which holds {keys}")
        arr = z[key]
        lab = z[labels_key] if labels_key is not None else None
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{str(path)!r}[{key!r}] has dtype {arr.dtype}; the images must be the "
                         "raw integer levels (e.g. uint8)")
    if arr.ndim == 4 and channels_last:
        arr = arr.transpose(0, 3, 1, 2)
    elif arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"{str(path)!r}[{key!r}] has shape {arr.shape}; images have shape "
                         "(N, H, W), (N, C, H, W) or, with channels_last=True, (N, H, W, C)")
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    k = torch.from_numpy(np.ascontiguousarray(arr))
    labels = None
    if lab is not None:
        if not np.issubdtype(lab.dtype, np.integer) or lab.shape != (arr.shape[0],):
            raise ValueError(f"{str(path)!r}[{labels_key!r}] must be integers of shape "
                             f"({arr.shape[0]},), got {lab.dtype} of shape {lab.shape}")
        labels = torch.from_numpy(lab.astype(np.int64))
    levels = _levels_of(k, levels, None, f"{str(path)!r}[{key!r}]")
    return ImageDataset(k, labels, levels=levels, scaling=scaling, dtype=dtype,
                        name=name or path.stem)


register_dataset("digits", ImageSource(
    load_digits, n_test=DIGITS_N_TEST,
    description="scikit-learn's 8x8 digits, 1x8x8, 17 levels, 1500 train / 297 held out"))
