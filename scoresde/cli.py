"""Command line: ``scoresde compare | train | sample | likelihood | demo``.

Errors a user can cause (a missing checkpoint, an unknown solver, an impossible budget list,
an output path that is a file) print one line and exit with status 2, without a traceback.

``--import MODULE`` (repeatable; before or after the subcommand) imports a user's module, or a
``.py`` file, before the command runs, so that the solvers, networks, SDEs, metrics, targets
and data sets it registers are known to every command (a checkpoint of a user's network
loads, ``--sde``/``--solvers`` accept the new names).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .version import __version__

EXIT_USAGE = 2


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _out_dir(path: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"output folder {path!r} exists and is not a folder")
    p.mkdir(parents=True, exist_ok=True)
    return p


def _result_folder(path: str, overwrite: bool):
    """The atomic result folder of a command (`scoresde.files.atomic_folder`): a non-empty
    `--out` is refused unless `--overwrite`, before any work."""
    from .files import atomic_folder, check_output_folder

    try:
        check_output_folder(path, overwrite)
    except ValueError as e:
        raise UsageError(str(e).replace("overwrite=True (--overwrite on the command line)",
                                        "--overwrite")) from None
    return atomic_folder(path, overwrite=overwrite)


def _or(value: Any, default: Any) -> Any:
    """An option's value, or its default when it was not given (None; 0 stays 0)."""
    return default if value is None else value


def _command() -> str:
    return "scoresde " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _sde(name: str):
    from .sdes import SDES, get_sde

    if name not in SDES:
        raise UsageError(f"unknown SDE {name!r}; registered: {sorted(SDES)}")
    return get_sde(name)


def import_user_modules(names: Sequence[str]) -> None:
    """Import each module name (or ``.py`` file) so that its registrations take effect."""
    for name in names:
        try:
            if name.endswith(".py") or os.sep in name:
                path = Path(name)
                if not path.is_file():
                    raise UsageError(f"--import {name!r}: no such file")
                spec = importlib.util.spec_from_file_location(path.stem, path)
                if spec is None or spec.loader is None:
                    raise UsageError(f"--import {name!r}: not a Python file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = module
                spec.loader.exec_module(module)
            else:
                if os.getcwd() not in sys.path and "" not in sys.path:
                    sys.path.insert(0, os.getcwd())   # as `python -m` does: a module next to you
                importlib.import_module(name)
        except UsageError:
            raise
        except Exception as e:  # the user's module failed: say which, in one line
            raise UsageError(f"--import {name!r} failed: {type(e).__name__}: {e}") from None


def _ranks(device: Any = "cpu") -> tuple[int, int]:
    """``(rank, world size)``, joining torchrun's process group first when ``WORLD_SIZE > 1``
    (``torchrun --nproc-per-node N -m scoresde sample ...``): every rank runs the command,
    the work is sharded, and rank 0 alone writes and prints. The group's backend suits
    `device`, where the model's tensors live (gloo for the CPU, nccl for CUDA)."""
    from .training.distributed import init, rank_and_world

    init(device)
    return rank_and_world()


# ----- compare ---------------------------------------------------------------------------
def _image_info(checkpoint: str, data: str | None = None) -> dict[str, Any] | None:
    """The checkpoint's image data set and quantization (`image_workflow.image_info`), or
    None for a model of a 2-D toy set."""
    from . import load_checkpoint
    from .image_workflow import image_info

    meta = load_checkpoint(checkpoint).get("meta", {})
    return image_info({**meta, **({"data": data} if data else {})})


def cmd_compare(a: argparse.Namespace) -> int:
    from .evaluation.compare import DEFAULT_BUDGETS, builtin_target, checkpoint_target, compare

    if a.checkpoint and _image_info(a.checkpoint, a.data) is not None:
        return _compare_images(a)
    if a.features_cache is not None:
        raise UsageError("--features-cache is for image checkpoints (FD/KID features)")
    if a.checkpoint:
        target = checkpoint_target(a.checkpoint, a.data)
    else:
        target = builtin_target(a.target, _sde(a.sde))
    budgets = a.nfe or list(DEFAULT_BUDGETS)
    _result_folder(a.out, a.overwrite)            # refuse a non-empty --out before any work
    rank, _ = _ranks(target.model.device)
    comp = compare(target, a.solvers, budgets, n=2000 if a.n is None else a.n, replicates=a.replicates,
                   budget_mode=a.budget_mode.replace("-", "_"), grids=a.grids, seed=a.seed,
                   t_end=a.t_end, out_dir=a.out, floor_repeats=a.floor_repeats,
                   pathwise=not a.no_pathwise, reference_tol=a.reference_tol,
                   dtype=getattr(torch, a.dtype), progress=not a.no_progress,
                   command=_command(), overwrite=a.overwrite, shard=True)
    if rank != 0:
        return 0
    out = Path(a.out)
    print(f"\nsliced W2 / noise floor ({target.name}; 1.00 = as close as exact samples):\n")
    print(comp.headline("sw2"))
    print("\n" + comp.verdict_line("sw2"))
    grid_txt = comp.grid_tables("sw2")
    if grid_txt:
        print("\nsolver x grid (sliced W2 / noise floor):\n\n" + grid_txt)
    print(f"\nreport: {out / 'report.md'}")
    return 0


def _compare_images(a: argparse.Namespace) -> int:
    """`compare --checkpoint` on an image model: FD/KID in the classifier's features."""
    from .image_workflow import IMAGE_BUDGETS, compare_images

    _result_folder(a.out, a.overwrite)            # refuse a non-empty --out before any work
    rank, _ = _ranks()
    comp, accuracy = compare_images(
        a.checkpoint, a.solvers, a.nfe or list(IMAGE_BUDGETS), data=a.data, n=a.n,
        cache_dir=a.features_cache, classifier_steps=a.classifier_steps,
        replicates=a.replicates,
        budget_mode=a.budget_mode.replace("-", "_"), grids=a.grids, seed=a.seed, t_end=a.t_end,
        out_dir=a.out, floor_repeats=a.floor_repeats, pathwise=not a.no_pathwise,
        reference_tol=_or(a.reference_tol, 1e-4), dtype=getattr(torch, a.dtype),
        progress=not a.no_progress, command=_command(), overwrite=a.overwrite, shard=True)
    if rank != 0:
        return 0
    print(f"\nFréchet distance in classifier features / real-vs-real floor ({comp.config['target']}; "
          f"classifier accuracy {accuracy:.3f}; not Inception FID):\n")
    print(comp.headline("fd"))
    print("\n" + comp.verdict_line("fd"))
    print(f"\nreport: {Path(a.out) / 'report.md'}")
    return 0


# ----- train -----------------------------------------------------------------------------
def train_model(data: str, out: Path, *, steps: int, sde_name: str = "vp", batch_size: int = 512,
                lr: float = 2e-3, hidden: int = 128, depth: int = 3, seed: int = 0,
                prediction: str = "eps", weighting: str = "sigma2", progress: bool = True,
                n_data: int = 50_000) -> tuple[Any, float]:
    """Train an MLP score model on a toy set; writes ``model.pt``, ``loss.png`` and
    ``score_field.png`` to ``out``. Returns (trainer, seconds).

    Under torchrun (``torchrun --nproc-per-node N -m scoresde train ...``) every process
    trains its share of each batch of ``batch_size`` rows and only rank 0 writes the files."""
    from . import ScoreModel, Trainer
    from .analytic import GaussianMixture
    from .data import DATASETS, sample_toy
    from .evaluation.plots import plot_losses, plot_score_fields
    from .nets import MLPScoreNet

    if data not in DATASETS:
        raise UsageError(f"unknown data set {data!r}; choose from {list(DATASETS)}")
    sde = _sde(sde_name)
    x = sample_toy(data, n_data, generator=torch.Generator().manual_seed(seed))
    net = MLPScoreNet(dim=2, hidden=hidden, depth=depth,
                      generator=torch.Generator().manual_seed(seed + 1))
    model = ScoreModel(net, sde, prediction=prediction)
    trainer = Trainer(model, lr=lr, batch_size=batch_size, warmup_steps=min(200, steps // 10),
                      ema_decay=0.999, weighting=weighting, seed=seed, progress=progress,
                      checkpoint_dir=out, checkpoint_every=max(1, steps // 5),
                      meta={"data": data, "command": _command()})
    t0 = time.perf_counter()
    trainer.fit(x, steps=steps)
    seconds = time.perf_counter() - t0
    trainer.save(out / "model.pt")                   # atomic: replaces an old model.pt only now
    if trainer.rank != 0:                            # under torchrun: rank 0 writes the files
        return trainer, seconds
    (out / "last.pt").unlink(missing_ok=True)
    plot_losses(trainer.losses, out / "loss.png")
    ema = trainer.ema_model()
    gm = GaussianMixture.eight_gaussians() if data == "eight_gaussians" else None
    fields = {}
    for t in (0.05, 0.3):
        fields[f"learned score, t={t}"] = (lambda p, t=t: ema.score(p.float(), t).double())
        if gm is not None:
            fields[f"exact score, t={t}"] = (lambda p, t=t: gm.score(p, t, sde))
    plot_score_fields(fields, out / "score_field.png", lim=2.5,
                      title=f"{data}: learned (EMA) vs exact score")
    return trainer, seconds


def cmd_train(a: argparse.Namespace) -> int:
    from .image_workflow import choose_net, parameter_count, train_image_model
    from .nets.unet import PRESETS

    if a.steps < 1:
        raise UsageError(f"--steps must be a positive integer, got {a.steps}")
    net = choose_net(a.data, a.net)
    if net == "unet" and (a.hidden is not None or a.depth is not None):
        raise UsageError("--hidden and --depth size the MLP (--net mlp); size a U-Net with "
                         "--preset")
    if net == "mlp" and a.preset is not None:
        raise UsageError("--preset names a U-Net configuration (--net unet, image data sets)")
    if net == "unet" and a.preset is not None and a.preset not in PRESETS:
        raise UsageError(f"unknown U-Net preset {a.preset!r}; presets: {list(PRESETS)}")
    if (Path(a.out) / "model.pt").exists() and not a.overwrite:
        raise UsageError(f"{str(Path(a.out) / 'model.pt')!r} exists; choose another --out or "
                         "pass --overwrite to replace it when training has finished")
    out = _out_dir(a.out)
    if net == "unet":
        trainer, seconds = train_image_model(
            a.data, out, steps=a.steps, preset=a.preset or "tiny", batch_size=_or(a.batch_size, 64),
            lr=a.lr, sde_name=a.sde, prediction=a.prediction, weighting=a.weighting,
            seed=a.seed, progress=not a.no_progress, command=_command())
        plots = f"{out / 'loss.png'}, {out / 'samples.png'}"
        what = f"UNet {a.preset or 'tiny'!r}, {parameter_count(trainer.model):,} parameters: "
    else:
        trainer, seconds = train_model(a.data, out, steps=a.steps, sde_name=a.sde,
                                       batch_size=_or(a.batch_size, 512), lr=a.lr,
                                       hidden=_or(a.hidden, 128), depth=_or(a.depth, 3), seed=a.seed,
                                       prediction=a.prediction, weighting=a.weighting,
                                       progress=not a.no_progress)
        plots = f"{out / 'loss.png'}, {out / 'score_field.png'}"
        what = ""
    if trainer.rank != 0:
        return 0
    tail = trainer.losses[-100:]
    print(f"{what}trained {a.steps} steps in {seconds:.1f} s; final loss (mean of last "
          f"{len(tail)}) {sum(tail) / len(tail):.4f}")
    print(f"checkpoint: {out / 'model.pt'}; plots: {plots}")
    return 0


# ----- sample ----------------------------------------------------------------------------
def cmd_sample(a: argparse.Namespace) -> int:
    import numpy as np

    from . import load_checkpoint, load_model
    from .evaluation.plots import plot_samples
    from .evaluation.sharding import sample_seeded
    from .evaluation.specs import SolverSpec

    model = load_model(a.checkpoint)
    meta = load_checkpoint(a.checkpoint).get("meta", {})
    info = _image_info(a.checkpoint)
    if info is not None:
        return _sample_images(a, model, info)
    if a.grid_png or a.gif:
        raise UsageError("--grid-png and --gif are for image checkpoints; a 2-D model writes "
                         "samples.png (a scatter plot)")
    event_shape = meta.get("event_shape") or [(meta.get("net") or {}).get("dim", 2)]
    spec = SolverSpec.parse(a.solver)
    folder = _result_folder(a.out, a.overwrite)
    out = Path(a.out)
    cond = None
    if a.class_label is not None:
        k = getattr(model.net, "num_classes", None)
        if not k:
            raise UsageError("--class needs a class-conditional network (one with num_classes); "
                             f"this checkpoint's {type(model.net).__name__} is unconditional")
        if not 0 <= a.class_label < k:
            raise UsageError(f"--class {a.class_label} is outside the network's classes 0..{k - 1}")
        cond = {"y": torch.full((a.n,), a.class_label, dtype=torch.long, device=model.device)}
    if a.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {a.batch_size}")
    rank, _ = _ranks(model.device)
    # sample i from (seed, i): the same on any number of processes
    res, noise = sample_seeded(model, (a.n, *event_shape), spec, a.nfe, seed=a.seed,
                               batch_size=a.batch_size, cond=cond, progress=not a.no_progress)
    if rank != 0:
        return 0
    x = res.x.cpu()
    with folder as work:
        np.savez(work / "samples.npz", x=x.numpy(), nfe=res.nfe, solver=spec.label, seed=a.seed,
                 noise=noise, command=_command(), **({"label": a.class_label} if cond else {}))
        plot_samples(x, work / "samples.png", title=f"{spec.label}, NFE {res.nfe}")
    print(f"{a.n} samples with {spec.label} (NFE {res.nfe}): {out / 'samples.npz'}, "
          f"{out / 'samples.png'}")
    return 0


def _sample_images(a: argparse.Namespace, model: Any, info: dict[str, Any]) -> int:
    from .evaluation.specs import SolverSpec
    from .image_workflow import draw_images, write_images

    if a.n < 1:
        raise UsageError(f"--num-samples must be a positive integer, got {a.n}")
    if a.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {a.batch_size}")
    folder = _result_folder(a.out, a.overwrite)
    rank, _ = _ranks(model.device)
    res, noise = draw_images(model, info, a.n, solver=a.solver, nfe=a.nfe, seed=a.seed,
                             batch_size=a.batch_size, progress=not a.no_progress and rank == 0)
    if rank != 0:
        return 0
    with folder as work:
        files = write_images(model, info, res, work, solver=a.solver, seed=a.seed, noise=noise,
                             grid_png=a.grid_png, gif=a.gif, command=_command())
    names = ", ".join(str(Path(a.out) / p.name) for p in files)
    label = SolverSpec.parse(a.solver).label
    print(f"{a.n} {info['data']} samples with {label} (NFE {res.nfe}): {names}")
    return 0


# ----- likelihood ------------------------------------------------------------------------
def likelihood_table(model: Any, x: torch.Tensor, exact: Any = None, *, progress: bool = True,
                     rtol: float = 1e-5, atol: float = 1e-5, divergence: str = "exact",
                     variable: str | None = None, norm: str = "per_sample",
                     bound: int | None = None,
                     seed: int = 0, batch_size: int | None = None) -> tuple[str, dict[str, Any]]:
    """Markdown table of NLL (nats) and bits/dim through the PF-ODE, with the variational
    bound (`bound` Monte Carlo draws per point, one batched forward each) and the exact
    values when the density is known. With `batch_size`, the PF-ODE solve runs in batches
    of that many points sharded over the ranks of a process group, with per-sample probes
    (`log_likelihood_sharded`); the bound runs on every rank."""
    from . import bits_per_dim, log_likelihood, variational_bound
    from .evaluation.sharding import log_likelihood_sharded

    if batch_size is None:
        res = log_likelihood(model, x, divergence=divergence, rtol=rtol, atol=atol,
                             variable=variable, norm=norm, progress=progress,
                             generator=torch.Generator().manual_seed(seed))
    else:
        res = log_likelihood_sharded(model, x, seed=seed, batch_size=batch_size,
                                     progress=progress, divergence=divergence, rtol=rtol,
                                     atol=atol, variable=variable, norm=norm)
    d = x[0].numel()
    nll = float(-res.logp.mean())
    se = float(res.logp.std() / math.sqrt(x.shape[0]))
    bpd = float(bits_per_dim(res.logp, x.shape).mean())
    rows = [("PF-ODE (model)", nll, se, bpd, res.nfe)]
    out = {"nll": nll, "nll_se": se, "bpd": bpd, "nfe": float(res.nfe), "variable": res.variable}
    if bound is not None:
        vb = variational_bound(model, x, n_samples=bound, progress=progress,
                               generator=torch.Generator().manual_seed(seed + 1))
        # the spread over points plus the Monte Carlo error of each point's estimate
        b_nll = float(-vb.bound.mean())
        b_se = float(vb.bound.std() / math.sqrt(x.shape[0]))
        rows.append((f"variational bound (model, {bound} draws/point; an upper bound on NLL)",
                     b_nll, b_se, float(bits_per_dim(vb.bound, x.shape).mean()), vb.nfe))
        out.update(bound_nll=b_nll, bound_nll_se=b_se, bound_nfe=float(vb.nfe))
    if exact is not None:
        lp = exact.log_prob(x.double())
        e_nll = float(-lp.mean())
        rows.append(("exact density", e_nll, float(lp.std() / math.sqrt(x.shape[0])),
                     float(bits_per_dim(lp, x.shape).mean()), 0))
        out["exact_nll"] = e_nll
    lines = ["| estimate | NLL (nats) | ± s.e. | bits/dim | NFE |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {v:.4f} | {s:.4f} | {b:.4f} | {k} |" for n, v, s, b, k in rows]
    lines.append(f"\n(n = {x.shape[0]} held-out points, D = {d}, continuous data, "
                 f"{divergence} divergence, rtol = {rtol}, atol = {atol}, variable "
                 f"{res.variable}, {norm} error norm)")
    return "\n".join(lines), out


def cmd_likelihood(a: argparse.Namespace) -> int:
    from . import SamplingError, load_checkpoint, load_model
    from .analytic import GaussianMixture
    from .data import DATASETS, sample_toy

    model = load_model(a.checkpoint)
    info = _image_info(a.checkpoint, a.data)
    if info is not None:
        return _likelihood_images(a, model, info)
    if a.probes is not None:
        raise UsageError("--probes is for image checkpoints (bits/dim of held-out images)")
    a.batch_size = _or(a.batch_size, DEFAULT_BATCH_SIZE)
    data = a.data or load_checkpoint(a.checkpoint).get("meta", {}).get("data")
    if data not in DATASETS:
        raise UsageError(f"no known toy data set for {a.checkpoint!r} (got {data!r}); pass --data "
                         f"with one of {list(DATASETS)}")
    if a.bound is not None and a.bound < 1:
        raise UsageError(f"--variational-bound needs N >= 1 draws per point, got {a.bound}")
    if a.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {a.batch_size}")
    x = sample_toy(data, a.n, generator=torch.Generator().manual_seed(a.seed + 10_000))
    exact = GaussianMixture.eight_gaussians() if data == "eight_gaussians" else None
    folder = _result_folder(a.out, a.overwrite)
    out = Path(a.out)
    rank, _ = _ranks(model.device)
    try:
        table, vals = likelihood_table(model, x, exact, progress=not a.no_progress and rank == 0,
                                       divergence=a.divergence or "exact", rtol=a.rtol, atol=a.atol,
                                       variable=a.variable, norm=a.norm, bound=a.bound,
                                       seed=a.seed, batch_size=a.batch_size)
    except SamplingError as e:
        raise UsageError(f"the likelihood solve failed: {e}") from None
    if rank != 0:
        return 0
    return _write_likelihood(folder, out, f"Likelihood of held-out {data}", table, vals)


def _likelihood_images(a: argparse.Namespace, model: Any, info: dict[str, Any]) -> int:
    from . import SamplingError
    from .image_workflow import image_likelihood

    if a.bound is not None:
        raise UsageError("--variational-bound is for 2-D toy models; image checkpoints report "
                         "bits/dim through the PF-ODE")
    folder = _result_folder(a.out, a.overwrite)
    rank, _ = _ranks(model.device)
    try:
        table, vals = image_likelihood(model, info, n=a.n, n_probes=_or(a.probes, 1),
                                       batch_size=_or(a.batch_size, 64), seed=a.seed,
                                       divergence=a.divergence or "hutchinson", rtol=a.rtol,
                                       atol=a.atol, variable=a.variable, norm=a.norm,
                                       progress=not a.no_progress and rank == 0)
    except SamplingError as e:
        raise UsageError(f"the likelihood solve failed: {e}") from None
    if rank != 0:
        return 0
    return _write_likelihood(folder, Path(a.out), f"Bits/dim of held-out {info['data']}", table,
                             vals)


def _write_likelihood(folder: Any, out: Path, title: str, table: str, vals: Any) -> int:
    """Write likelihood.md (title, command, table) and likelihood.json into the result
    folder (atomically, on leaving `folder`), then print the table."""
    with folder as work:
        (work / "likelihood.md").write_text(f"# {title}\n\n`{_command()}`\n\n{table}\n")
        (work / "likelihood.json").write_text(json.dumps(vals, indent=2))
    print(table)
    print(f"\ntable: {out / 'likelihood.md'}")
    return 0


# ----- demo ------------------------------------------------------------------------------
DEMO_BUDGETS = (10, 20, 50, 100)


def cmd_demo(a: argparse.Namespace) -> int:
    threads = _or(a.threads, 1 if a.images else None)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {threads}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _demo_images(a) if a.images else _demo_toy(a)
    finally:
        torch.set_num_threads(before)


def _demo_toy(a: argparse.Namespace) -> int:
    a.out = a.out or "runs/demo"
    a.steps, a.replicates = _or(a.steps, 5000), _or(a.replicates, 5)
    out = Path(a.out)
    with _result_folder(a.out, a.overwrite) as work:
        wall, lines = _demo(a, work, out)
    print("\n".join(lines))
    print(f"\nreport: {out / 'report.md'}  ({wall:.0f} s)")
    return 0


#: training steps of `scoresde demo --images` (chosen by measurement: docs/results.md)
IMAGE_DEMO_STEPS = 1500


def _demo_images(a: argparse.Namespace) -> int:
    from .image_workflow import run_image_demo

    a.out = a.out or "runs/demo_images"
    out = Path(a.out)
    with _result_folder(a.out, a.overwrite) as work:
        wall, lines = run_image_demo(work, out, quick=a.quick, steps=_or(a.steps, IMAGE_DEMO_STEPS),
                                     replicates=_or(a.replicates, 3), seed=a.seed,
                                     progress=not a.no_progress, command=_command())
    print("\n".join(lines))
    print(f"\nreport: {out / 'report.md'}  ({wall:.0f} s)")
    return 0


def _demo(a: argparse.Namespace, work: Path, out: Path) -> tuple[float, list[str]]:
    """The demo's four steps, written into `work` (renamed to `out` when they all finish)."""
    from .data import sample_toy
    from .evaluation.compare import builtin_target, checkpoint_target, compare

    t_start = time.perf_counter()
    n, steps, reps = (200, 60, 2) if a.quick else (a.n, a.steps, a.replicates)
    budgets = (6, 12) if a.quick else DEMO_BUDGETS
    prog = not a.no_progress
    opts = dict(n=n, replicates=reps, seed=a.seed, progress=prog, command=_command(),
                budget_mode="at_most", floor_repeats=3 if a.quick else 10,
                reference_tol=1e-4 if a.quick else None)
    print(f"[1/4] comparing samplers on the exact 8-Gaussians score, {reps} replicates of "
          f"{n} samples ({out / 'exact'})")
    exact = compare(builtin_target("eight_gaussians"), None, budgets, out_dir=work / "exact",
                    **opts)
    print(f"[2/4] training an MLP score network on eight_gaussians, {steps} steps "
          f"({out / 'train'})")
    _, seconds = train_model("eight_gaussians", _out_dir(str(work / "train")), steps=steps,
                             seed=a.seed, progress=prog)
    print(f"      trained in {seconds:.0f} s")
    print(f"[3/4] comparing samplers on the trained model ({out / 'trained'})")
    ckpt = work / "train" / "model.pt"
    trained = compare(checkpoint_target(ckpt), None, budgets, out_dir=work / "trained", **opts)
    print("[4/4] PF-ODE likelihood of held-out data: trained model vs exact density")
    target = checkpoint_target(ckpt)
    x = sample_toy("eight_gaussians", 50 if a.quick else 500,
                   generator=torch.Generator().manual_seed(a.seed + 10_000))
    lik, _ = likelihood_table(target.model, x, target.exact, progress=prog)
    wall = time.perf_counter() - t_start
    headline_title = ("Sliced W2 to held-out target samples divided by its noise floor (1.00 = "
                      "as close as two exact sample sets; lower is better), mean ± 95% CI over "
                      f"{reps} replicates")
    report = [
        "# scoresde demo", "", f"`{_command()}` — {wall:.0f} s wall time, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads.", "",
        "## Samplers at equal NFE on the exact 8-Gaussians score", "",
        headline_title + ".", "", exact.headline("sw2"), "", exact.verdict_line("sw2"), "",
        "Solver error alone (pathwise distance to a tight PF-ODE solve from the same x_T, "
        "deterministic solvers):", "", exact.headline("pathwise", legend=False), "",
        exact.verdict_line("pathwise"), "",
        "Details, paired differences, exact log-density gaps, Stein discrepancies and plots: "
        "[exact/report.md](exact/report.md)", "",
        "## The same comparison on the trained MLP", "",
        "Here the distances mix solver and model error; the pathwise error (same network, "
        "tight solve) isolates the solver's part.", "",
        trained.headline("sw2"), "", trained.verdict_line("sw2"), "",
        trained.headline("pathwise", legend=False), "", trained.verdict_line("pathwise"), "",
        "Details and plots: [trained/report.md](trained/report.md); training curve and learned vs "
        "exact score: [train/loss.png](train/loss.png), "
        "[train/score_field.png](train/score_field.png)", "",
        "## Likelihood of held-out data through the PF-ODE", "", lik, "",
    ]
    (work / "report.md").write_text("\n".join(report) + "\n")
    lines = [f"\nExact 8-Gaussians score ({headline_title}):\n",
             exact.headline("sw2") + "\n\n" + exact.verdict_line("sw2"),
             f"\nTrained model ({headline_title}):\n\n" + trained.headline("sw2") + "\n\n"
             + trained.verdict_line("sw2"),
             "\n" + lik]
    return wall, lines


# ----- parser ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scoresde", description="Score-SDE toolkit: compare "
                                "samplers at equal NFE, train toy models, likelihoods.")
    p.add_argument("--version", action="version", version=f"scoresde {__version__}")
    p.add_argument("--import", dest="imports_top", action="append", default=[],
                   metavar="MODULE", help=_IMPORT_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--import", dest="imports", action="append", default=[],
                        metavar="MODULE", help=_IMPORT_HELP)

    c = sub.add_parser("compare", parents=[common], help="compare samplers at equal NFE budgets")
    c.add_argument("--target", default="eight_gaussians",
                   help="registered exact target (built in: eight_gaussians, mixture2d, mixture5d)")
    c.add_argument("--checkpoint", help="compare a trained model instead of a built-in target")
    c.add_argument("--data", help="toy data set of the checkpoint (default: the one it records)")
    c.add_argument("--sde", default="vp", help="registered SDE for built-in targets (built in: "
                   "vp, subvp, ve, vp_cosine)")
    c.add_argument("--solvers", nargs="+", help='solver specs, e.g. ddim "ddim:eta=1.0" '
                   '"pf_ode:method=rk4" "pf_ode:adaptive=1" (default: each registered solver\'s '
                   "comparison line-up)")
    c.add_argument("--nfe", nargs="+", type=int, help="NFE budgets (default 10 20 50 100 250 "
                   "1000; image checkpoints 10 20 50 100)")
    c.add_argument("--budget-mode", choices=["at-most", "exact"], default="at-most",
                   help="at-most (default): each solver at its largest budget <= K, the NFE it "
                   "used shown; exact: exactly K, a budget a solver cannot meet is not run")
    c.add_argument("--grids", nargs="+", metavar="GRID", help="run every solver without its "
                   "own grid= on each of these time grids (uniform, quadratic, logsnr, karras, "
                   "...): a solver x grid table")
    _num_samples(c, None, "samples per replicate (default 2000; for an image checkpoint all "
                 "held-out images, and at most that many)")
    c.add_argument("--features-cache", default=None, metavar="DIR", help="image checkpoints: "
                   "folder of the cached feature classifier of FD/KID (default: features/ "
                   "next to the checkpoint)")
    c.add_argument("--classifier-steps", type=int, default=500, help="image checkpoints: "
                   "training steps of the feature classifier (part of its cache key)")
    c.add_argument("--replicates", type=int, default=5, help="independent replicates (fresh "
                   "x_T, solver noise and reference set each; >= 2): every number comes with "
                   "a 95%% confidence interval over them")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--t-end", type=float, default=None)
    c.add_argument("--floor-repeats", type=int, default=10,
                   help="pairs of exact sample sets for the noise floors")
    c.add_argument("--no-pathwise", action="store_true", help="skip the tight PF-ODE reference "
                   "solve and the pathwise errors")
    c.add_argument("--reference-tol", type=float, default=None, help="rtol = atol of the "
                   "pathwise reference solve (default 1e-6 in float32, 1e-7 in float64; image "
                   "checkpoints 1e-4)")
    c.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    c.add_argument("--out", default="runs/compare")
    c.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_compare)

    t = sub.add_parser("train", parents=[common], help="train a score model: an MLP on a 2-D "
                       "toy set, a U-Net on an image data set (digits)")
    t.add_argument("--data", default="eight_gaussians", help="a 2-D toy set (eight_gaussians, "
                   "moons, ...) or an image data set (digits)")
    t.add_argument("--net", choices=["mlp", "unet"], default=None, help="the network (default: "
                   "mlp for 2-D toy sets, unet for image data sets)")
    t.add_argument("--preset", default=None, help="U-Net configuration: tiny (default), small, "
                   "ddpm_cifar10 (--net unet)")
    t.add_argument("--steps", type=int, default=5000)
    t.add_argument("--sde", default="vp")
    t.add_argument("--batch-size", type=int, default=None, help="default 512 (mlp), 64 (unet)")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--hidden", type=int, default=None, help="MLP width (default 128)")
    t.add_argument("--depth", type=int, default=None, help="MLP residual blocks (default 3)")
    t.add_argument("--prediction", default="eps")
    t.add_argument("--weighting", default="sigma2")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/train")
    t.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", parents=[common], help="sample a trained checkpoint (PNG + NPZ)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--solver", default="euler_maruyama")
    s.add_argument("--nfe", type=int, default=100)
    _num_samples(s, 5000, "samples to draw; sample i is a function of (--seed, i), the same "
                 "on any number of processes (torchrun)")
    s.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="samples per batch (default %(default)s); under torchrun the batches "
                        "are divided among the processes")
    s.add_argument("--grid-png", action="store_true", help="image checkpoints: write "
                   "samples.png, a grid of the first 64 samples")
    s.add_argument("--gif", action="store_true", help="image checkpoints: write "
                   "reverse_process.gif, the reverse process of 36 samples from the same seed")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--class", dest="class_label", type=int, default=None, metavar="K",
                   help="sample class K of a class-conditional network (cond y=K); default: "
                        "unconditional")
    s.add_argument("--out", default="runs/sample")
    s.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_sample)

    lk = sub.add_parser("likelihood", parents=[common], help="NLL / bits per dim of held-out data (PF-ODE)")
    lk.add_argument("--checkpoint", required=True)
    lk.add_argument("--data")
    _num_samples(lk, 1000, "held-out points (image checkpoints: the first n held-out images, "
                 "at most all)")
    lk.add_argument("--seed", type=int, default=0)
    lk.add_argument("--divergence", default=None, help="exact | hutchinson (default: exact; "
                    "image checkpoints hutchinson)")
    lk.add_argument("--probes", type=int, default=None, help="image checkpoints: Hutchinson "
                    "probes per image (default 1)")
    lk.add_argument("--batch-size", type=int, default=None, help="points per adaptive solve "
                    f"(default {DEFAULT_BATCH_SIZE}; image checkpoints: images per PF-ODE solve, "
                    "default 64); under torchrun the batches are divided among the processes")
    lk.add_argument("--rtol", type=float, default=1e-5)
    lk.add_argument("--atol", type=float, default=1e-5)
    lk.add_argument("--variable", default=None,
                    help="integration variable of the PF-ODE: t | sigma | log_snr | edm "
                         "(default: sigma where the SDE allows it, else t)")
    lk.add_argument("--norm", default="per_sample",
                    help="error norm: per_sample | rms | logp (atol in nats of log p)")
    lk.add_argument("--variational-bound", "--bound", dest="bound", type=int, nargs="?",
                    const=256, default=None, metavar="N",
                    help="also estimate the variational bound (Song et al. 2021) with N draws "
                         "per point (default 256) and print it next to the ODE estimate")
    lk.add_argument("--out", default="runs/likelihood")
    lk.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    lk.add_argument("--no-progress", action="store_true")
    lk.set_defaults(func=cmd_likelihood)

    d = sub.add_parser("demo", parents=[common],
                       help="the README's demo: compare, train, compare, likelihood")
    d.add_argument("--images", action="store_true", help="the image demo instead: a tiny U-Net "
                   "on 8x8 digits, sample grid, reverse-process GIF, bits/dim, FD/KID")
    d.add_argument("--out", default=None, help="default runs/demo (runs/demo_images with "
                   "--images)")
    d.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    d.add_argument("--steps", type=int, default=None, help="training steps (default 5000; "
                   f"{IMAGE_DEMO_STEPS} with --images)")
    _num_samples(d, 500, "samples per replicate (the image demo uses all held-out digits)")
    d.add_argument("--replicates", type=int, default=None, help="replicates per comparison "
                   "(default 5; 3 with --images)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None, help="intra-op threads of torch "
                   "(default: 1 with --images, whose small tensors run faster on one thread "
                   "and far faster on a busy machine; else torch's default)")
    d.add_argument("--quick", action="store_true", help="a tiny run (for tests)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def _num_samples(p: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """``--num-samples`` (``a.n``), and the old ``--n`` as a hidden alias: torchrun would take
    ``--n`` for an abbreviation of its own flags."""
    p.add_argument("--num-samples", dest="n", type=int, default=default,
                   help=help if default is None else f"{help} (default %(default)s)")
    p.add_argument("--n", dest="n", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


#: rows per batch of `sample` and `likelihood` (`scoresde.evaluation.sharding`)
DEFAULT_BATCH_SIZE = 1000

_OVERWRITE_HELP = ("replace a non-empty --out folder (train: an existing model.pt), once the new "
                   "run has finished; without it such a folder is refused")
_IMPORT_HELP = ("import a module (or a .py file) first, so that what it registers (solvers, "
                "networks, SDEs, metrics, targets, data sets) is known; repeatable")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .files import LockedError
    from .samplers import SamplingError

    try:
        import_user_modules([*args.imports_top, *args.imports])
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        notes = [str(e)] if str(e) else []             # TrainingInterrupted says where it saved
        notes += getattr(e, "__notes__", [])            # atomic folders say where partial results are
        print(f"\nscoresde: interrupted{': ' + '; '.join(notes) if notes else ''}", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, OSError, LockedError, SamplingError) as e:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        print(f"scoresde: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE


def _one_line(e: BaseException) -> str:
    """The first line of an error's message; for OS errors, the reason and the path."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.strerror}: {e.filename!r}"
    lines = str(e).splitlines()
    return lines[0] if lines and lines[0] else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
