r"""The feature space of the image metrics: a small classifier the library trains on the data
set itself, whose penultimate layer embeds an image as a vector.

The Fréchet distance and KID of image generative models are usually computed in the feature
space of an Inception network trained on ImageNet (FID: Heusel et al. 2017; KID: Bińkowski
et al. 2018). For small data sets (8x8 digits, 28x28 or 32x32 images) an ImageNet network
is neither available offline nor meaningful, so here the features come from a
:class:`FeatureClassifier` trained on the same labelled data set
(:func:`train_feature_classifier`), cached on disk per data set
(:func:`feature_classifier`). The distances
[`frechet_distance`][scoresde.evaluation.metrics.frechet_distance] and
[`kid`][scoresde.evaluation.metrics.kid] are then taken between the embeddings
(:meth:`FeatureClassifier.embed`) of generated and real images.

**These numbers are not comparable to Inception FID/KID**, nor across classifiers: another
data set, another architecture, another seed or number of training steps gives another
feature space and other values. Compare models only under the same cached classifier, and
always next to the real-vs-real noise floor (docs: Results, "Image metrics").
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training.checkpoint import load_checkpoint, save_checkpoint
from ..validation import check_generator, check_int, check_real

__all__ = ["FeatureClassifier", "TrainedClassifier", "train_feature_classifier",
           "feature_classifier", "data_fingerprint", "CACHE_NAME"]

CACHE_NAME = "feature_classifier.pt"
"""The file name of the cached classifier in `cache_dir`."""

_CACHE_KIND = "scoresde-feature-classifier"
# bump when the classifier, its training or the fingerprint change: older caches are refused
_CACHE_VERSION = 1
# the number of evenly spaced pixel values that enter the data fingerprint
_FINGERPRINT_VALUES = 4096


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _conv(c_in: int, c_out: int, stride: int) -> nn.Conv2d:
    # skip_init: the weights are drawn by reset_parameters(generator), never from the global RNG
    return nn.utils.skip_init(nn.Conv2d, c_in, c_out, 3, stride=stride, padding=1)


def _stages(h: int, w: int) -> int:
    """Downsampling stages: 1 for 8x8, 2 for 16x16 to 31x31, 3 from 32x32 on."""
    return max(1, min(3, int(math.floor(math.log2(min(h, w)))) - 2))


class FeatureClassifier(nn.Module):
    r"""A small convolutional classifier of images ``(B, C, H, W)`` whose penultimate layer,
    :meth:`features`, is the embedding of the image metrics.

    Architecture: a 3x3 convolution, then ``s`` stages of [3x3 convolution with stride 2,
    3x3 convolution], every convolution followed by GroupNorm and SiLU (no batch statistics:
    an image's features never depend on the other images of its batch, nor on train/eval
    mode); channels ``width * 2**i`` at stage ``i``; ``s = 1`` for ``min(H, W) < 16``, 2 below
    32, else 3. An adaptive average pool to 2x2 (which keeps coarse position), a linear layer
    to ``feature_dim`` and a SiLU give the features; a linear head gives the class logits.

    **Arguments:**

    - `in_channels`: ``C`` (1 for grayscale, 3 for RGB, any positive number).
    - `num_classes`: number of classes (>= 2).
    - `image_size`: ``(H, W)``, both >= 8.
    - `width`: channels of the first stage (>= 8).
    - `feature_dim`: the embedding's dimension (>= 2).
    - `generator`: if given, every weight is drawn from it (PyTorch's default initialisation,
      without touching the global RNG); otherwise PyTorch's default generator is used.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int],
                 width: int = 32, feature_dim: int = 64,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.num_classes = check_int("num_classes", num_classes, 2)
        if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2):
            raise TypeError(f"image_size must be a pair (H, W), got {image_size!r}")
        h = check_int("image_size[0] (H)", image_size[0], 8)
        w = check_int("image_size[1] (W)", image_size[1], 8)
        self.image_size = (h, w)
        self.width = check_int("width", width, 8)
        self.feature_dim = check_int("feature_dim", feature_dim, 2)
        check_generator(generator)
        layers: list[nn.Module] = [_conv(in_channels, width, 1), _gn(width), nn.SiLU()]
        c = width
        for _ in range(_stages(h, w)):
            layers += [_conv(c, 2 * c, 2), _gn(2 * c), nn.SiLU(),
                       _conv(2 * c, 2 * c, 1), _gn(2 * c), nn.SiLU()]
            c *= 2
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        self.trunk = nn.Sequential(*layers)
        self.embedding = nn.utils.skip_init(nn.Linear, 4 * c, feature_dim)
        self.head = nn.utils.skip_init(nn.Linear, feature_dim, num_classes)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every convolution and linear layer with PyTorch's default initialisation
        (Kaiming-uniform weights, uniform biases in ``±1/sqrt(fan_in)``) from `generator`;
        GroupNorm starts at the identity."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                fan_in = m.weight[0].numel()
                nn.init.uniform_(m.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in),
                                 generator=generator)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (plain values), for :meth:`from_config`."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes,
                "image_size": list(self.image_size), "width": self.width,
                "feature_dim": self.feature_dim}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FeatureClassifier:
        """A new (untrained) classifier from :meth:`config`'s dict."""
        cfg = dict(config)
        cfg["image_size"] = tuple(cfg["image_size"])
        return cls(**cfg)

    def _check_images(self, x: object) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of images, got {type(x).__name__}")
        shape = (self.in_channels, *self.image_size)
        if x.ndim == 2 and x.shape[1] == math.prod(shape):
            x = x.reshape(-1, *shape)          # flattened images, as the metric registry has them
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, shape))}) (or (B, "
                             f"{math.prod(shape)}) flattened), got {tuple(x.shape)}")
        return x

    def features(self, x: Tensor) -> Tensor:
        """The penultimate-layer embedding, shape ``(B, feature_dim)`` (differentiable)."""
        x = self._check_images(x)
        return F.silu(self.embedding(self.trunk(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, shape ``(B, num_classes)``."""
        return self.head(self.features(x))

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @torch.no_grad()
    def embed(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """:meth:`features` of many images, in batches of `batch_size`, without gradients:
        ``x`` is ``(n, C, H, W)`` or flattened ``(n, C*H*W)`` on any device and of any
        floating dtype (cast to the classifier's). **Returns:** float64 features
        ``(n, feature_dim)`` on ``x``'s device."""
        x = self._check_images(x)
        check_int("batch_size", batch_size, 1)
        p = self.head.weight
        out = [self.features(x[i:i + batch_size].to(device=p.device, dtype=p.dtype))
               for i in range(0, x.shape[0], batch_size)]
        if not out:
            return torch.empty(0, self.feature_dim, dtype=torch.float64, device=x.device)
        return torch.cat(out).to(device=x.device, dtype=torch.float64)

    @torch.no_grad()
    def accuracy(self, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
        """The fraction of images ``x`` whose predicted class is ``y``."""
        x = self._check_images(x)
        p = self.head.weight
        hits = 0
        for i in range(0, x.shape[0], batch_size):
            logits = self(x[i:i + batch_size].to(device=p.device, dtype=p.dtype))
            hits += int((logits.argmax(dim=1) == y[i:i + batch_size].to(p.device)).sum())
        return hits / max(1, x.shape[0])


class TrainedClassifier(NamedTuple):
    """What :func:`train_feature_classifier` and :func:`feature_classifier` return: the
    classifier (in eval mode) and its accuracy on the held-out test split."""

    classifier: FeatureClassifier
    test_accuracy: float


def _check_labelled(x: object, y: object) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"x and y must be tensors (images (n, C, H, W) and labels (n,)), got "
                        f"{type(x).__name__} and {type(y).__name__}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be floating-point images of shape (n, C, H, W), got "
                         f"{x.dtype} of shape {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.is_complex():
        raise ValueError(f"y must be integer labels of shape (n,) = ({x.shape[0]},), got "
                         f"{y.dtype} of shape {tuple(y.shape)}")
    if x.shape[2] < 8 or x.shape[3] < 8:
        raise ValueError(f"images must be at least 8x8, got H, W = {x.shape[2]}, {x.shape[3]}")
    if x.shape[0] < 10:
        raise ValueError(f"need at least 10 labelled images to train and test, got {x.shape[0]}")
    if bool((y < 0).any()):
        raise ValueError(f"labels must be >= 0, got min {int(y.min())}")
    return x, y.long()


def _split(n: int, test_fraction: float) -> tuple[Tensor, Tensor]:
    """A fixed split of ``range(n)``: the same for the same ``n`` and fraction, always (a
    permutation from a private generator seeded with 0: no dependence on the data's order,
    which is often sorted or periodic by class, and none on the caller's generator)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_test = min(n - 1, max(1, round(test_fraction * n)))
    return perm[n_test:], perm[:n_test]


def train_feature_classifier(
    x: Tensor,
    y: Tensor,
    *,
    generator: torch.Generator,
    steps: int = 500,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    width: int = 32,
    feature_dim: int = 64,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
) -> TrainedClassifier:
    r"""Train a :class:`FeatureClassifier` on labelled images and measure its test accuracy.

    The data are split once, deterministically (the same split for the same ``n``, whatever
    the generator): ``round(test_fraction * n)`` images are held out, the rest train. Training
    minimises the cross-entropy with AdamW (``lr``, ``weight_decay``, the learning rate
    decaying to 0 on a cosine), ``steps`` minibatches of ``batch_size`` training images drawn
    with replacement. The classifier lives on ``x``'s device, in ``x``'s dtype.

    **Arguments:**

    - `x`: images ``(n, C, H, W)`` (``H, W >= 8``), e.g. scaled to ``[-1, 1]``.
    - `y`: integer labels ``(n,)`` in ``[0, num_classes)``.
    - `generator`: draws the initial weights (a CPU generator) and the minibatches.
    - `steps`, `batch_size`, `lr`, `weight_decay`: the optimisation.
    - `width`, `feature_dim`: the network's size (see :class:`FeatureClassifier`).
    - `test_fraction`: held-out fraction, in ``(0, 1)``.
    - `num_classes`: default ``max(y) + 1``.

    **Returns:** :class:`TrainedClassifier` ``(classifier, test_accuracy)``; the classifier is
    in eval mode (it has no batch statistics: eval and train mode compute the same).
    """
    x, y = _check_labelled(x, y)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_real("lr", lr, low=0.0, low_open=True)
    check_real("weight_decay", weight_decay, low=0.0)
    check_real("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    k = int(y.max()) + 1
    if num_classes is None:
        num_classes = max(2, k)
    elif check_int("num_classes", num_classes, 2) < k:
        raise ValueError(f"num_classes={num_classes} but the labels go up to {k - 1}")
    init = generator if generator.device.type == "cpu" else None
    if init is None:
        raise ValueError("generator must be a CPU generator (it draws the initial weights)")
    clf = FeatureClassifier(x.shape[1], num_classes, (x.shape[2], x.shape[3]), width=width,
                            feature_dim=feature_dim, generator=init)
    clf = clf.to(device=x.device, dtype=x.dtype).train()
    train, test = _split(x.shape[0], test_fraction)
    train, test = train.to(x.device), test.to(x.device)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / steps)))
    for _ in range(steps):
        pick = torch.randint(0, train.shape[0], (batch_size,), generator=generator)
        idx = train[pick.to(x.device)]
        loss = F.cross_entropy(clf(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    clf.eval()
    return TrainedClassifier(clf, clf.accuracy(x[test], y[test]))


# the options of train_feature_classifier that a cache records (with their defaults)
_TRAIN_DEFAULTS = {k: p.default for k, p in
                   inspect.signature(train_feature_classifier).parameters.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in ("generator", "steps")}


def data_fingerprint(x: Tensor, y: Tensor | None = None) -> str:
    """A short hash identifying a data set: its shape, ``4096`` evenly spaced values of ``x``
    (rounded to float32, so the same data in float32 or float64 match) and all labels ``y``.
    Equal data give equal fingerprints; another data set (or the same one resized, reordered
    or rescaled) almost surely not."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    flat = x.detach().reshape(-1)
    k = min(_FINGERPRINT_VALUES, flat.numel())
    idx = torch.linspace(0, max(0, flat.numel() - 1), k, dtype=torch.float64,
                         device=flat.device).round().long()
    h = hashlib.sha256(f"{tuple(x.shape)}".encode())
    h.update(flat[idx].to(torch.float32).cpu().numpy().tobytes())
    if y is not None:
        h.update(f"|{tuple(y.shape)}".encode())
        h.update(y.detach().long().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def feature_classifier(
    x: Tensor,
    y: Tensor,
    cache_dir: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int = 500,
    retrain: bool = False,
    verbose: bool = False,
    **options: Any,
) -> TrainedClassifier:
    """The feature classifier of a labelled data set, trained once and cached.

    The first call trains with :func:`train_feature_classifier` (its generator seeded with
    `seed`) and writes ``cache_dir/feature_classifier.pt`` atomically (state dict, config,
    test accuracy, the data's :func:`data_fingerprint` and the training options). Later calls
    load it (``torch.load(weights_only=True)``) instead of training. A cache made for **other
    data** (another fingerprint) or other training options is refused with a `ValueError`
    rather than silently reused; pass ``retrain=True`` to replace it, or use another
    ``cache_dir``.

    **Arguments:** `x`, `y` as for :func:`train_feature_classifier`; `cache_dir` a folder
    (created if missing); `seed` and `steps` and the other `options` (``batch_size``, ``lr``,
    ``weight_decay``, ``width``, ``feature_dim``, ``test_fraction``, ``num_classes``) of the
    training; `verbose` prints one line saying whether it trained or loaded.

    **Returns:** :class:`TrainedClassifier`, the classifier on ``x``'s device.
    """
    x, y = _check_labelled(x, y)
    check_int("seed", seed, 0)
    unknown = set(options) - set(_TRAIN_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; allowed: {sorted(_TRAIN_DEFAULTS)}")
    path = Path(cache_dir) / CACHE_NAME
    fingerprint = data_fingerprint(x, y)
    wanted = {"seed": seed, "steps": steps, **_TRAIN_DEFAULTS, **options}
    if path.exists() and not retrain:
        ckpt = load_checkpoint(path, map_location=x.device)
        if ckpt.get("kind") != _CACHE_KIND:
            raise ValueError(f"{str(path)!r} is a checkpoint but not a feature classifier")
        if ckpt.get("cache_version") != _CACHE_VERSION:
            raise ValueError(f"the cached feature classifier {str(path)!r} was made by another "
                             f"version of scoresde (cache version {ckpt.get('cache_version')}, "
                             f"this one reads {_CACHE_VERSION}); retrain=True replaces it")
        if ckpt["fingerprint"] != fingerprint or list(ckpt["shape"]) != list(x.shape):
            raise ValueError(
                f"the cached feature classifier {str(path)!r} was trained on other data "
                f"(shape {tuple(ckpt['shape'])}, fingerprint {ckpt['fingerprint']}) than the "
                f"data given (shape {tuple(x.shape)}, fingerprint {fingerprint}); use another "
                "cache_dir, or retrain=True to replace it")
        if ckpt["options"] != wanted:
            raise ValueError(
                f"the cached feature classifier {str(path)!r} was trained with options "
                f"{ckpt['options']}, not {wanted}; use another cache_dir, or retrain=True to "
                "replace it")
        clf = FeatureClassifier.from_config(ckpt["config"])
        clf.load_state_dict(ckpt["model"])
        clf = clf.to(device=x.device, dtype=x.dtype).eval()
        if verbose:
            print(f"feature classifier loaded from {path} (test accuracy "
                  f"{ckpt['test_accuracy']:.4f})")
        return TrainedClassifier(clf, float(ckpt["test_accuracy"]))
    t0 = time.perf_counter()
    res = train_feature_classifier(x, y, generator=torch.Generator().manual_seed(seed),
                                   steps=steps, **options)
    save_checkpoint({"kind": _CACHE_KIND, "cache_version": _CACHE_VERSION,
                     "config": res.classifier.config(),
                     "model": res.classifier.state_dict(), "test_accuracy": res.test_accuracy,
                     "fingerprint": fingerprint, "shape": list(x.shape), "options": wanted},
                    path)
    if verbose:
        print(f"feature classifier trained in {time.perf_counter() - t0:.1f} s (test accuracy "
              f"{res.test_accuracy:.4f}), saved to {path}")
    return res
