r"""The image workflow behind the command line: train a U-Net on an image data set, sample
image grids and reverse-process GIFs, bits/dim of held-out images, the sampler comparison in
a classifier's feature space (Fréchet distance and KID), and the image demo.

Each function is the library call that one CLI command makes (`scoresde train --data digits`,
`scoresde sample --grid-png --gif`, `scoresde likelihood`, `scoresde compare`,
`scoresde demo --images`); a notebook can call them directly.

**Conventions.** An image checkpoint records its data set, its quantization and the scaling
the model saw in `meta` (`"data"`, `"levels"`, `"scaling"`; `image_info`), so the other
commands know them. Models are trained on **uniformly dequantized** images,
$y = a(k + u) + b$ with fresh $u \sim U[0,1)$ per batch (Theis, van den Oord & Bethge 2016;
`scoresde.likelihood.bpd`'s convention), so that the held-out bits/dim of
[`image_bits_per_dim`][scoresde.likelihood.bpd.image_bits_per_dim] measure a density over
the bins, not spikes at the bin centres. Samples are scored as images are stored: each
pixel rounded to its level (`ImageDataset.to_levels`) and mapped to the level's centre,
like the real images, before the classifier embeds them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .data import DATASETS, ImageDataset, ImageSource, load_dataset
from .evaluation.compare import Comparison, checkpoint_target, compare
from .evaluation.features import feature_classifier
from .evaluation.metrics import Metric, feature_metric
from .evaluation.sharding import DEFAULT_BATCH_SIZE, chunks_of_rank, gather_chunks, sample_seeded
from .evaluation.specs import SolverSpec
from .evaluation.targets import Target
from .likelihood import BPDResult, image_bits_per_dim
from .models import ScoreModel
from .nets import UNet
from .rng import splitmix64_reference
from .samplers import SampleResult, sample
from .sdes import SDES, get_sde
from .training import Trainer, load_checkpoint, load_model
from .training.distributed import all_gather_object, rank_and_world, run_on_every_rank
from .validation import check_choice, check_int

Tensor = torch.Tensor

__all__ = ["NETS_FOR_DATA", "IMAGE_BUDGETS", "DEMO_SOLVERS", "is_image_data", "image_data_sets",
           "choose_net", "image_info", "dequantized_source", "train_image_model",
           "draw_images", "write_images", "sample_images", "chunk_generator", "image_likelihood",
           "image_metrics", "image_target",
           "compare_images", "run_image_demo", "parameter_count"]

#: the network kinds the CLI's `train --net` builds, and the data they take
NETS_FOR_DATA = {"mlp": "2-D toy sets", "unet": "image data sets"}

#: the default NFE budgets of an image comparison (`scoresde compare` on an image checkpoint)
IMAGE_BUDGETS = (10, 20, 50, 100)

#: rtol = atol of the demo's held-out bits/dim (measured on the demo's model: 1e-3 and 1e-5
#: differ by 0.0015 bits/dim, a tenth of the standard error over the 297 held-out digits, at
#: a quarter of the cost; docs/results.md)
LIKELIHOOD_TOL = 1e-3

#: the demo's solvers: a deterministic multistep solver (DPM-Solver++(2M)) and a stochastic
#: one (DDPM's ancestral sampler), each on its default grid
DEMO_SOLVERS = ("dpm_solver", "ancestral")


def is_image_data(name: str) -> bool:
    """Whether `name` is a registered fixed image data set (an `ImageSource`, e.g.
    ``"digits"``) rather than a 2-D toy distribution."""
    return isinstance(DATASETS.get(name), ImageSource)


def image_data_sets() -> list[str]:
    """The registered image data sets, by name."""
    return [k for k, v in DATASETS.items() if isinstance(v, ImageSource)]


def choose_net(data: str, net: str | None) -> str:
    """The network kind for data set `data`: `net` checked against it, or by default
    ``"mlp"`` for a 2-D toy set and ``"unet"`` for an image set.

    **Raises:** `ValueError` for an unknown data set or network, or a network that does not
    fit the data (`--net unet` on a toy set, `--net mlp` on images), naming what fits."""
    if data not in DATASETS:
        raise ValueError(f"unknown data set {data!r}; choose from {list(DATASETS)}")
    images = is_image_data(data)
    if net is None:
        return "unet" if images else "mlp"
    check_choice("net", net, tuple(NETS_FOR_DATA))
    if net == "unet" and not images:
        raise ValueError(f"--net unet trains on image data sets ({', '.join(image_data_sets())}); "
                         f"{data!r} is a 2-D toy set: use --net mlp")
    if net == "mlp" and images:
        raise ValueError(f"--net mlp trains on 2-D toy sets; {data!r} is an image data set: use "
                         "--net unet")
    return net


def image_info(meta: dict[str, Any]) -> dict[str, Any] | None:
    """``{"data", "levels", "scaling"}`` of an image checkpoint's `meta`, or None for a
    checkpoint of a 2-D toy set. A checkpoint that names a registered image data set without
    recording its quantization gets the data set's own (scaling ``"[-1,1]"``)."""
    data = meta.get("data")
    if not is_image_data(data):
        return None
    scaling = meta.get("scaling", "[-1,1]")
    levels = meta.get("levels") or load_dataset(data, "test", scaling=scaling).levels
    return {"data": data, "levels": int(levels), "scaling": scaling}


def parameter_count(model: ScoreModel | torch.nn.Module) -> int:
    """The number of trainable parameters of a model's network (or of a module)."""
    net = model.net if isinstance(model, ScoreModel) else model
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def dequantized_source(ds: ImageDataset) -> Callable[[int, torch.Generator], Tensor]:
    """A data source for `Trainer.fit`: ``fn(batch_size, generator)`` draws images of `ds`
    uniformly with replacement and dequantizes them afresh,
    $y = a(k + u) + b$, $u \\sim U[0,1)$ (`ImageDataset.quantization`)."""
    from .likelihood import uniform_dequantize

    def draw(batch_size: int, generator: torch.Generator) -> Tensor:
        idx = torch.randint(0, len(ds), (batch_size,), generator=generator,
                            device=generator.device)
        return uniform_dequantize(ds.k[idx.to(ds.k.device)], generator=generator,
                                  dtype=ds.images.dtype, **ds.quantization)

    return draw


# ----- train ---------------------------------------------------------------------------
def train_image_model(data: str, out: str | os.PathLike, *, steps: int, preset: str = "tiny",
                      batch_size: int = 64, lr: float = 2e-3, ema_decay: float = 0.999,
                      warmup_steps: int | None = None, sde_name: str = "vp",
                      prediction: str = "eps", weighting: str = "sigma2", seed: int = 0,
                      progress: bool = True, command: str | None = None,
                      grid_solver: str = "dpm_solver", grid_nfe: int = 20
                      ) -> tuple[Trainer, float]:
    """Train a `UNet.preset(preset)` score model on the training split of image data set
    `data` (dequantized afresh every batch, `dequantized_source`) and write into `out`:
    ``model.pt`` (the checkpoint; its meta records ``data``, ``levels``, ``scaling``,
    ``preset``, and the training's wall and CPU seconds, ``train_seconds`` and
    ``train_cpu_seconds``, with the intra-op ``threads``), ``loss.png`` and
    ``samples.png``, a grid of 64 samples of the EMA model (`grid_solver` at `grid_nfe` NFE,
    seed `seed`).

    The network takes the data's channels and size (`in_channels`, `image_size` override
    the preset's). `warmup_steps` defaults to ``min(100, steps // 10)``. An existing
    ``model.pt`` is replaced only when training has finished (atomic write).

    **Returns:** ``(trainer, seconds of training)``."""
    from .evaluation.plots import plot_losses, save_image_grid

    if not is_image_data(data):
        raise ValueError(f"{data!r} is not an image data set; image data sets: "
                         f"{image_data_sets()}")
    if sde_name not in SDES:
        raise ValueError(f"unknown SDE {sde_name!r}; registered: {sorted(SDES)}")
    steps = check_int("steps", steps, 1)
    out = Path(out)
    ds = load_dataset(data, "train")
    c, h, w = ds.event_shape
    net = UNet.preset(preset, in_channels=c, image_size=(h, w),
                      generator=torch.Generator().manual_seed(seed + 1))
    model = ScoreModel(net, get_sde(sde_name), prediction=prediction)
    warmup = min(100, steps // 10) if warmup_steps is None else warmup_steps
    meta = {"data": data, "levels": ds.levels, "scaling": ds.scaling, "preset": preset,
            "dequantized": True, "command": command or ""}
    trainer = Trainer(model, lr=lr, batch_size=batch_size, warmup_steps=warmup,
                      ema_decay=ema_decay, weighting=weighting, seed=seed, progress=progress,
                      checkpoint_dir=out, checkpoint_every=max(1, steps // 5), meta=meta)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(dequantized_source(ds), steps=steps)
    seconds = time.perf_counter() - t0
    trainer.meta.update(train_seconds=round(seconds, 2),
                        train_cpu_seconds=round(time.process_time() - c0, 2),
                        threads=torch.get_num_threads())
    trainer.save(out / "model.pt")
    (out / "last.pt").unlink(missing_ok=True)
    plot_losses(trainer.losses, out / "loss.png", title=f"DSM training loss ({data}, UNet "
                f"{preset!r})")
    ema = trainer.ema_model()
    with torch.no_grad():
        x = sample(ema, (64, c, h, w), solver=SolverSpec.parse(grid_solver).make(), nfe=grid_nfe,
                   generator=torch.Generator().manual_seed(seed)).x
    save_image_grid(x.clamp(-1, 1) if ds.scaling == "[-1,1]" else x, out / "samples.png",
                    nrow=8, value_range=_range(ds.scaling), scale=4)
    return trainer, seconds


def _range(scaling: str) -> tuple[float, float]:
    return (-1.0, 1.0) if scaling == "[-1,1]" else (0.0, 1.0)


def _splits(info: dict[str, Any]) -> tuple[ImageDataset, ImageDataset]:
    return (load_dataset(info["data"], "train", scaling=info["scaling"]),
            load_dataset(info["data"], "test", scaling=info["scaling"]))


# ----- sample --------------------------------------------------------------------------
def draw_images(model: ScoreModel, info: dict[str, Any], n: int, *, solver: str = "dpm_solver",
                nfe: int | None = 50, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                progress: bool = False) -> tuple[SampleResult, str]:
    """`n` images of an image model, sample ``i`` a function of ``(seed, i)`` alone
    (per-sample noise, [`sample_sharded`][scoresde.evaluation.sharding.sample_sharded]):
    under torchrun the batches of `batch_size` are divided among the processes and every
    rank gets all `n`, identical to one process's. A solver that draws one noise path for a
    whole batch (``torchsde``, ``ggf``'s adaptive ``"brownian"`` solve) cannot do that: in one
    process it falls back to a generator seeded with `seed`; under torchrun it is a
    `ValueError` (`scoresde.evaluation.sharding.sample_seeded`).

    **Returns:** ``(result, noise)``, ``noise`` = ``"per-sample"`` or ``"generator"``."""
    shape = (check_int("n", n, 1), *_splits(info)[1].event_shape)
    return sample_seeded(model, shape, SolverSpec.parse(solver), nfe, seed=seed,
                         batch_size=batch_size, progress=progress)


def write_images(model: ScoreModel, info: dict[str, Any], res: SampleResult,
                 folder: str | os.PathLike, *, solver: str = "dpm_solver", seed: int = 0,
                 noise: str = "per-sample", grid_png: bool = True, gif: bool = False,
                 gif_n: int = 36, command: str = "") -> list[Path]:
    """Write images drawn by `draw_images` into `folder`: ``samples.npz`` (``x`` in the model's
    range, ``k`` the images rounded to the data's levels, ``nfe``, ``solver``, ``seed``,
    ``noise``), with `grid_png` ``samples.png`` (the first 64, 4x enlarged), and with `gif`
    ``reverse_process.gif``: the reverse process of `gif_n` further samples drawn with a
    generator seeded with `seed` (`sd.sample(..., trajectory=True)`, `save_trajectory_gif`:
    one frame per step, at most 30, evenly spaced, the denoised sample last). The GIF's
    samples are drawn here, in this process alone. **Returns:** the files written."""
    from .evaluation.plots import save_image_grid, save_trajectory_gif

    spec = SolverSpec.parse(solver)
    folder = Path(folder)
    ds = _splits(info)[1]
    x = res.x.detach().cpu()
    files = [folder / "samples.npz"]
    np.savez(files[0], x=x.numpy(), k=ds.to_levels(x).to(torch.int32).numpy(), nfe=res.nfe,
             solver=spec.label, seed=seed, noise=noise, command=command)
    vr = _range(info["scaling"])
    if grid_png:
        files.append(save_image_grid(x[:64], folder / "samples.png", nrow=8, value_range=vr,
                                     scale=4))
    if gif:
        traj = sample(model, (check_int("gif_n", gif_n, 1), *ds.event_shape), solver=spec.make(),
                      nfe=None if spec.adaptive else res.nfe,
                      generator=torch.Generator().manual_seed(seed), grid=spec.grid,
                      trajectory=True)
        files.append(save_trajectory_gif(traj.trajectory.cpu(), traj.times,
                                         folder / "reverse_process.gif", value_range=vr,
                                         nrow=math.ceil(math.sqrt(gif_n)), max_frames=30,
                                         size=3.0))
    return files


def sample_images(model: ScoreModel, info: dict[str, Any], n: int, folder: str | os.PathLike, *,
                  solver: str = "dpm_solver", nfe: int | None = 50, seed: int = 0,
                  grid_png: bool = True, gif: bool = False, gif_n: int = 36,
                  batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
                  command: str = "") -> dict[str, Any]:
    """Sample `n` images (`draw_images`) and write them into `folder` (`write_images`), in one
    process. `solver` is a solver spec (``"ddim:eta=1.0"``, ``"pf_ode:adaptive=1"``); `nfe`
    is ignored by an adaptive one. **Returns:** ``{"nfe", "solver", "files", "noise"}``."""
    res, noise = draw_images(model, info, n, solver=solver, nfe=nfe, seed=seed,
                             batch_size=batch_size, progress=progress)
    files = write_images(model, info, res, folder, solver=solver, seed=seed, noise=noise,
                         grid_png=grid_png, gif=gif, gif_n=gif_n, command=command)
    return {"nfe": res.nfe, "solver": SolverSpec.parse(solver).label, "files": files,
            "noise": noise}


# ----- likelihood ----------------------------------------------------------------------
def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """The generator of chunk `chunk` of a sharded computation seeded with `seed`: seeded with
    SplitMix64 of ``(seed, chunk)`` (`scoresde.rng.splitmix64_reference`), so a chunk's random
    numbers do not depend on which process computes it."""
    mixed = splitmix64_reference(splitmix64_reference(int(seed)) ^ int(chunk))
    return torch.Generator().manual_seed(mixed & 0x7FFF_FFFF_FFFF_FFFF)


def image_likelihood(model: ScoreModel, info: dict[str, Any], *, n: int | None = None,
                     n_probes: int = 1, n_draws: int = 1, batch_size: int = 64, seed: int = 0,
                     divergence: str = "hutchinson", rtol: float = 1e-5, atol: float = 1e-5,
                     variable: str | None = None, norm: str = "per_sample",
                     progress: bool = True) -> tuple[str, dict[str, Any]]:
    """Bits per dimension of the held-out images (the first `n`, default all) through the
    PF-ODE: `image_bits_per_dim` with `n_draws` uniform dequantizations and `n_probes`
    Hutchinson probes per image (`divergence="exact"` for the exact trace), in chunks of
    `batch_size` images, chunk ``k`` with the generator `chunk_generator(seed, k)`. Under
    torchrun the chunks are divided among the processes (round robin) and the per-image
    values gathered on every rank: the result is the same on any number of processes.

    **Returns:** ``(markdown table, values)`` with ``values`` = ``{"bpd", "bpd_se", "n",
    "levels", "scaling", "nfe", "seconds", ...}``: the mean over images and its standard
    error, which covers the data, dequantization and probe noise together; ``nfe`` summed
    over all chunks."""
    test = _splits(info)[1]
    if n is not None:
        n = check_int("n", n, 1)
        test = test.subset(slice(0, min(n, len(test))))
    batch_size = check_int("batch_size", batch_size, 1)
    rank, world = rank_and_world()
    mine = chunks_of_rank(len(test), batch_size, rank, world)
    t0 = time.perf_counter()

    def run() -> tuple[list[Tensor], int]:
        parts, nfe = [], 0
        for a, b in tqdm(mine, disable=not (progress and rank == 0), desc="bits/dim",
                         dynamic_ncols=True):
            res = image_bits_per_dim(model, test.subset(slice(a, b)), n_draws=n_draws,
                                     divergence=divergence, n_probes=n_probes,
                                     batch_size=b - a, progress=False,
                                     generator=chunk_generator(seed, a // batch_size),
                                     rtol=rtol, atol=atol, variable=variable, norm=norm)
            parts.append(torch.stack([res.bpd, res.logp], dim=1).detach().double())
            nfe += res.nfe
        return parts, nfe

    parts, nfe = run_on_every_rank(run)
    local = torch.cat(parts) if parts else torch.empty((0, 2), dtype=torch.float64,
                                                       device=model.device)
    rows = gather_chunks(local, len(test), batch_size).cpu()      # (bpd, logp) per image
    summary = BPDResult(bpd=rows[:, 0], stderr=None, logp=rows[:, 1],
                        nfe=sum(all_gather_object(nfe)))
    seconds = time.perf_counter() - t0
    mean, se, nfe = summary.mean, summary.mean_stderr, summary.nfe
    vals = {"bpd": mean, "bpd_se": se, "n": len(test), "levels": test.levels,
            "scaling": test.scaling, "divergence": divergence, "n_probes": n_probes,
            "n_draws": n_draws, "rtol": rtol, "atol": atol, "nfe": nfe, "seconds": seconds,
            "processes": world}
    d = math.prod(test.event_shape)
    how = (f"{n_probes} Rademacher probe{'s' if n_probes > 1 else ''} per image (Hutchinson)"
           if divergence == "hutchinson" else "exact divergence")
    table = "\n".join([
        "| data | images | bits/dim | ± s.e. | NFE (all batches) |", "|---|---|---|---|---|",
        f"| held-out {info['data']} | {len(test)} | {mean:.4f} | {se:.4f} | {nfe} |", "",
        f"(PF-ODE likelihood of uniformly dequantized images, {test.levels} levels per pixel, "
        f"scaling {test.scaling}, D = {d}; {n_draws} dequantization draw"
        f"{'s' if n_draws > 1 else ''} and {how}; rtol = {rtol}, atol = {atol}; the s.e. "
        f"covers the images, the dequantization and the probes; {seconds:.0f} s"
        f"{f' on {world} processes' if world > 1 else ''}. An upper bound on the discrete "
        "model's bits/dim, by Jensen.)"])
    return table, vals


# ----- comparison ----------------------------------------------------------------------
def image_metrics(info: dict[str, Any], cache_dir: str | os.PathLike, *, n: int,
                  seed: int = 0, steps: int = 500, kid_subsets: int = 50,
                  verbose: bool = False) -> tuple[list[Metric], float]:
    """The Fréchet distance (``"fd"``) and KID (``"kid"``) in the features of the library's
    classifier of the data set, for `compare`: the classifier is trained on the **training**
    split (`feature_classifier`, cached in `cache_dir`, `seed`, `steps`), and both sets are
    rounded to the data's levels before they are embedded (`ImageDataset.to_levels`, then
    the level centres), as stored images are. KID uses `kid_subsets` subsets of
    ``min(100, n // 2)`` rows. **Not comparable to Inception FID/KID.**

    **Returns:** ``(metrics, the classifier's held-out accuracy)``; the metrics are not
    registered (pass them as ``compare(..., metrics=...)``)."""
    train = _splits(info)[0]
    if train.labels is None:
        raise ValueError(f"the feature classifier needs labelled images; {info['data']!r} has "
                         "no labels")
    clf, accuracy = feature_classifier(train.images, train.labels, cache_dir, seed=seed,
                                       steps=steps, verbose=verbose)
    shape = train.event_shape

    def featurize(x: Tensor) -> Tensor:
        x = x.reshape(-1, *shape)
        return clf.embed(train.to_model(train.to_levels(x), dtype=train.images.dtype))

    s = max(2, min(100, n // 2))
    return ([feature_metric("fd", featurize, register=False,
                            title="Fréchet distance (classifier features)"),
             feature_metric("kid", featurize, register=False, subsets=kid_subsets,
                            subset_size=s, title=f"KID (classifier features, subsets of {s})")],
            accuracy)


def image_target(checkpoint: str | os.PathLike, data: str | None = None
                 ) -> tuple[Target, dict[str, Any]]:
    """`checkpoint_target` of an image checkpoint, after checking that it is one: held-out
    images as reference sets, training images for the noise floor. **Returns:**
    ``(target, image_info)``."""
    meta = load_checkpoint(checkpoint).get("meta", {})
    info = image_info({**meta, **({"data": data} if data else {})})
    if info is None:
        raise ValueError(f"checkpoint {str(checkpoint)!r} is not a model of an image data set "
                         f"(records data {meta.get('data')!r})")
    return checkpoint_target(checkpoint, info["data"]), info


def compare_images(checkpoint: str | os.PathLike, solvers: Sequence[str] | None = None,
                   budgets: Sequence[int] = IMAGE_BUDGETS, *, data: str | None = None,
                   n: int | None = None, cache_dir: str | os.PathLike | None = None,
                   classifier_steps: int = 500, reference_tol: float | None = 1e-4,
                   **options: Any) -> tuple[Comparison, float]:
    """`compare` on an image checkpoint: FD and KID in the classifier's features
    (`image_metrics`, the classifier cached in `cache_dir`, default the checkpoint's folder
    ``features/``), reference sets drawn from the held-out images without replacement
    (`n` per replicate, default and at most all of them), noise floors between training and
    held-out images, the pathwise error against a PF-ODE solve at `reference_tol` (default
    1e-4: image solves are costly, and solver errors at small budgets are far larger), image
    grids of the samples. `options` go to `compare` (``replicates``, ``seed``, ``out_dir``,
    ``progress``, ...).

    **Returns:** ``(comparison, the classifier's held-out accuracy)``."""
    target, info = image_target(checkpoint, data)
    held_out = len(_splits(info)[1])
    n = held_out if n is None else check_int("n", n, 10)
    if n > held_out:
        raise ValueError(f"n = {n} exceeds the {held_out} held-out images of {info['data']!r} "
                         "(reference sets are drawn from them without replacement)")
    cache = Path(cache_dir) if cache_dir is not None else Path(checkpoint).parent / "features"
    rank, world = rank_and_world() if options.get("shard") else (0, 1)

    def features() -> tuple[list[Metric], float]:
        return image_metrics(info, cache, n=n, steps=classifier_steps,
                             verbose=options.get("progress", True) and rank == 0)

    if world > 1:     # rank 0 trains (or loads) the cached classifier; then the others load it
        run_on_every_rank(lambda: features() if rank == 0 else None)
    metrics, accuracy = features()
    target = dataclasses.replace(target, description=(
        f"{target.description}; FD and KID in the features of a classifier trained on the "
        f"training split ({classifier_steps} steps, held-out accuracy {accuracy:.3f}, cached "
        f"in {str(cache)!r}; not comparable to Inception FID/KID)"))
    comp = compare(target, solvers, budgets, n=n, metrics=metrics, reference_tol=reference_tol,
                   **options)
    return comp, accuracy


# ----- demo ----------------------------------------------------------------------------
def run_image_demo(work: Path, out: Path, *, quick: bool = False, steps: int = 1500,
                   batch_size: int = 64, replicates: int = 3, seed: int = 0,
                   progress: bool = True, command: str = "") -> tuple[float, list[str]]:
    """The image demo, written into `work` (renamed to `out` by the caller):

    1. train `UNet.preset("tiny")` on the digits' training split (`train_image_model`,
       ``train/``);
    2. a grid of 64 samples (``samples.png``) and the reverse process of 36
       (``reverse_process.gif``), `DEMO_SOLVERS`'s deterministic solver at 50 NFE;
    3. held-out bits/dim with its standard error (``likelihood.md``, ``likelihood.json``);
    4. FD and KID at NFE 10, 20, 50 for `DEMO_SOLVERS`, `replicates` replicates, next to the
       real-vs-real floor (``compare/``; without the pathwise errors, whose tight reference
       solve would cost as much again: `scoresde compare` computes them);
    5. ``report.md``.

    `quick` makes every step tiny (a test of the pipeline, seconds; its numbers mean
    nothing). **Returns:** ``(wall seconds, summary lines)``."""
    t_start, c_start = time.perf_counter(), time.process_time()
    data = "digits"
    if quick:
        steps, batch_size, replicates = 5, 8, 2
    budgets = (3, 5) if quick else (10, 20, 50)
    grid_nfe = 4 if quick else 50
    print(f"[1/4] training UNet.preset('tiny') on {data}, {steps} steps of {batch_size} "
          f"({out / 'train'})")
    trainer, train_s = train_image_model(data, work / "train", steps=steps, batch_size=batch_size,
                                         seed=seed, progress=progress, command=command,
                                         grid_solver=DEMO_SOLVERS[0], grid_nfe=grid_nfe,
                                         ema_decay=0.995)
    ckpt = work / "train" / "model.pt"
    model = load_model(ckpt)
    info = image_info(load_checkpoint(ckpt)["meta"])
    params = parameter_count(model)
    train_cpu = float(trainer.meta["train_cpu_seconds"])
    tail = trainer.losses[-100:]
    print(f"      {params:,} parameters; trained in {train_s:.0f} s ({train_cpu:.0f} s CPU); "
          f"final loss {sum(tail) / len(tail):.4f}")
    print("[2/4] sample grid and reverse-process GIF")
    got = sample_images(model, info, 64, work, solver=DEMO_SOLVERS[0], nfe=grid_nfe, seed=seed,
                        gif=True, gif_n=36)
    print("[3/4] held-out bits/dim through the PF-ODE (Hutchinson)")
    tol = 1e-2 if quick else LIKELIHOOD_TOL
    lik_table, lik = image_likelihood(model, info, n=8 if quick else None, seed=seed,
                                      batch_size=8 if quick else 99, rtol=tol, atol=tol,
                                      progress=progress)
    (work / "likelihood.md").write_text(f"# Held-out bits/dim\n\n`{command}`\n\n{lik_table}\n")
    (work / "likelihood.json").write_text(json.dumps(lik, indent=2))
    print(f"      {lik['bpd']:.3f} ± {lik['bpd_se']:.3f} bits/dim")
    print(f"[4/4] FD and KID at NFE {', '.join(map(str, budgets))}: "
          f"{', '.join(DEMO_SOLVERS)} ({out / 'compare'})")
    comp, accuracy = compare_images(
        ckpt, list(DEMO_SOLVERS), budgets, n=20 if quick else None,
        cache_dir=work / "features", classifier_steps=20 if quick else 500,
        replicates=replicates, seed=seed, progress=progress, out_dir=work / "compare",
        floor_repeats=2 if quick else 10, pathwise=False, command=command)
    wall = time.perf_counter() - t_start
    cpu = time.process_time() - c_start
    fd = comp.headline("fd")
    report = [
        "# scoresde image demo: a tiny U-Net on 8x8 digits", "",
        f"`{command}` — {wall:.0f} s wall time, {cpu:.0f} s CPU time, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads.", "",
        "## Training", "",
        f"`UNet.preset('tiny')`, {params:,} parameters, VP-SDE, eps-prediction, DSM loss "
        f"(sigma² weighting) on the {len(_splits(info)[0])} training digits, uniformly "
        f"dequantized ({info['levels']} levels) afresh every batch; {steps} steps of "
        f"{batch_size}, Adam lr 2e-3, EMA 0.995: {train_s:.0f} s wall, {train_cpu:.0f} s CPU "
        f"({torch.get_num_threads()} threads). Loss curve: "
        "[train/loss.png](train/loss.png).", "",
        "![samples](samples.png)", "",
        f"64 samples ({got['solver']}, NFE {got['nfe']}); the reverse process of 36 more: "
        "[reverse_process.gif](reverse_process.gif).", "",
        "## Held-out bits/dim", "", lik_table, "",
        "## Sample quality at a few budgets: FD and KID in a classifier's features", "",
        f"Feature classifier trained on the training split, held-out accuracy {accuracy:.3f}. "
        "**Not Inception FID/KID**: these values are comparable only under this classifier, "
        "at the same sample size, next to the real-vs-real floor (training vs held-out "
        "digits).", "",
        "Fréchet distance / its real-vs-real floor (1.00 = as close to the held-out digits as "
        "other real digits are):", "", fd, "", comp.verdict_line("fd"), "",
        "KID (unbiased; as a ratio to its floor where the floor is significantly positive, "
        "else raw values):", "", comp.headline("kid", legend=False), "",
        "Details, floors and plots: [compare/report.md](compare/report.md). The solver error "
        "alone (the pathwise distance of each deterministic solver to a tight PF-ODE solve from "
        "the same x_T) is left out here, as its reference solve costs as much again: `scoresde "
        "compare --checkpoint train/model.pt --solvers dpm_solver ancestral --nfe 10 20 50` "
        "reports it.", ""]
    (work / "report.md").write_text("\n".join(report) + "\n")
    lines = [f"\n{params:,} parameters, {steps} steps of {batch_size} in {train_s:.0f} s "
             f"({train_cpu:.0f} s CPU)",
             f"held-out bits/dim: {lik['bpd']:.4f} ± {lik['bpd_se']:.4f} (s.e.)",
             f"\nFD / real-vs-real floor (classifier accuracy {accuracy:.3f}; not Inception "
             f"FID):\n\n{fd}"]
    return wall, lines
