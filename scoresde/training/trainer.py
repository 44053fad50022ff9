r"""A thin training loop around [`dsm_loss`][scoresde.losses.dsm_loss].

Adam/AdamW with linear learning-rate warm-up, gradient-norm clipping, an exponential moving
average (EMA) of the weights (Polyak averaging, as in Ho et al. 2020 and Song et al. 2021),
a tqdm progress bar with the running loss, atomic checkpoints and exact resume: the
trainer's own `torch.Generator` state is checkpointed with the optimizer, so a run resumed
from step `k` reaches the same parameters as an uninterrupted run.

Data: a tensor, a labelled data set `(x, y)` or `{"x": x, **cond}`, a callable, or any
iterable of batches (a `DataLoader`), re-iterated epoch after epoch; conditional batches
train a conditional network, with optional condition dropout for classifier-free guidance
(Ho & Salimans 2022). Optional random horizontal flips of images, and a JSONL log (and
TensorBoard, if installed and asked for) of the loss, learning rate, gradient norm and
throughput.

Past one process: under torchrun the Trainer joins the process group, wraps the network in
`DistributedDataParallel` and gives each rank its slice of every global batch; mixed
precision (bfloat16 autocast, float16 with a gradient scaler), gradient accumulation and
warm-up + cosine/linear learning-rate schedules (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, RandomSampler
from tqdm import tqdm

from ..files import RunLock, remove_orphans, write_text_atomic
from ..losses import WEIGHTINGS, drop_cond, dsm_loss, resolve_null_cond, sample_time
from ..models import ScoreModel, check_model
from ..validation import check_choice, check_cond, check_instance, check_int, check_positive, check_real
from ..version import __version__
from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint

Tensor = torch.Tensor
Batch = Tensor | tuple[Tensor, ...] | list[Tensor] | Mapping[str, Tensor]
DataSource = (Tensor | tuple[Tensor, Tensor] | Mapping[str, Tensor]
              | Callable[[int, torch.Generator], Batch] | Iterable[Batch])
LossFn = Callable[..., Tensor]

__all__ = ["Trainer", "TrainingInterrupted", "PRECISIONS", "LR_SCHEDULES"]

#: mixed-precision modes: the network's forward pass runs under autocast in this dtype;
#: parameters, optimizer state and EMA stay float32
PRECISIONS = ("float32", "bfloat16", "float16")
#: learning-rate decay after the warm-up
LR_SCHEDULES = ("constant", "cosine", "linear")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped `Trainer.fit` between two steps; `step` is the number of steps done and
    `path` the checkpoint written then (`None` without a `checkpoint_dir`)."""

    def __init__(self, step: int, path: Path | None) -> None:
        where = f"; checkpoint saved to {path}" if path is not None else \
            " (no checkpoint_dir, nothing saved)"
        super().__init__(f"training interrupted after step {step}{where}")
        self.step, self.path = step, path


class _DeferredInterrupt:
    """Turns the first Ctrl-C (SIGINT) during training into a flag read between steps, so the
    state is saved consistently; a second Ctrl-C interrupts at once. Only in the main thread
    and only when Python's default SIGINT handler is installed (others are left alone).

    Under torchrun (`distributed=True`) SIGTERM is deferred too (torchrun forwards the signal
    it receives to every worker, and schedulers preempt with SIGTERM), and a repeat within
    `grace` seconds of the first counts as the same request: a Ctrl-C in a terminal reaches
    each worker twice, directly and forwarded by torchrun."""

    def __init__(self, distributed: bool = False, grace: float = 5.0) -> None:
        self.requested = False
        self.distributed, self.grace = distributed, grace
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.requested:
            if self.distributed and (signum == signal.SIGTERM or now - self._first < self.grace):
                return
            raise KeyboardInterrupt
        self.requested, self._first = True, now

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is not threading.main_thread():
            return self
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handler)
        if self.distributed and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def _check_checkpoint_dir(folder: str | os.PathLike | None) -> Path | None:
    """The checkpoint folder, checked when the Trainer is made (not at the first save)."""
    if folder is None:
        return None
    p = Path(check_instance("checkpoint_dir", folder, (str, os.PathLike), "a path or None"))
    if p.exists() and not p.is_dir():
        raise ValueError(f"checkpoint_dir {str(p)!r} exists and is not a folder")
    p.mkdir(parents=True, exist_ok=True)
    if not os.access(p, os.W_OK | os.X_OK):
        raise PermissionError(f"checkpoint_dir {str(p)!r} is not writable")
    return p


def _check_log_path(path: str | os.PathLike | None) -> Path | None:
    if path is None:
        return None
    p = Path(check_instance("log_path", path, (str, os.PathLike), "a path or None"))
    if p.is_dir():
        raise ValueError(f"log_path {str(p)!r} is a folder; give a file name such as "
                         "'runs/x/log.jsonl'")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _read_log(path: Path, upto: int) -> tuple[list[str], bool]:
    """The lines of an existing JSONL log whose step is `<= upto` (a resumed run writes the
    later ones again), and whether the file must be rewritten (lines dropped, or a last line
    cut short by a crash)."""
    if not path.exists():
        return [], False
    text = path.read_text()
    kept, dirty = [], bool(text) and not text.endswith("\n")
    for line in text.splitlines():
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            step = None
        if isinstance(step, int) and not isinstance(step, bool) and step <= upto:
            kept.append(line + "\n")
        else:
            dirty = True
    return kept, dirty


class _StepLog:
    """One `fit` call's JSONL log (and TensorBoard writer): a line every `every` steps with
    the mean loss since the previous line, read from the loss history, so it is exact across
    resumes; the throughput and gradient norm cover the steps this process ran."""

    def __init__(self, path: Path, step: int, tensorboard: bool) -> None:
        self.path = path
        self.kept, self.rewrite = _read_log(path, step)
        self.last = max((json.loads(line)["step"] for line in self.kept), default=step)
        self.t0, self.samples, self.grad_sum, self.grad_n = time.perf_counter(), 0, 0.0, 0
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(path.parent),
                                        purge_step=step + 1 if step > 0 else None)

    def record(self, samples: int, grad_norm: float) -> None:
        self.samples += samples
        if math.isfinite(grad_norm):        # float16 steps the scaler skipped are left out
            self.grad_sum += grad_norm
            self.grad_n += 1

    def write(self, step: int, losses: list[float], lr: float, epoch: float | int | None) -> None:
        now = time.perf_counter()
        window = losses[self.last:step]
        rec = {"step": step, "loss": sum(window) / len(window) if window else None, "lr": lr,
               "grad_norm": self.grad_sum / self.grad_n if self.grad_n else None,
               "epoch": epoch, "samples_per_s": self.samples / max(now - self.t0, 1e-9),
               "wall_time": time.time()}
        line = json.dumps(rec) + "\n"
        if self.rewrite:
            write_text_atomic(self.path, "".join(self.kept) + line)
            self.rewrite = False
        else:
            with open(self.path, "a") as f:
                f.write(line)
        if self.writer is not None:
            for key, value in rec.items():
                if key not in ("step", "wall_time") and value is not None:
                    self.writer.add_scalar(f"train/{key}", value, step, walltime=rec["wall_time"])
            self.writer.flush()
        self.last, self.t0, self.samples, self.grad_sum, self.grad_n = step, now, 0, 0.0, 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _split_batch(batch: object, where: str) -> tuple[Tensor, dict[str, Tensor]]:
    """A batch as `(x, cond)`: a tensor `x`; a tuple/list `(x,)` or `(x, y)` (`cond =
    {"y": y}`); or a dict with key `"x"` whose other entries are the conditioning."""
    if isinstance(batch, Tensor):
        x, cond = batch, {}
    elif isinstance(batch, (tuple, list)):
        if len(batch) not in (1, 2):
            raise ValueError(f"{where}: a tuple batch must be (x,) or (x, y), got {len(batch)} "
                             "items; use a dict {'x': x, 'y': y, ...} for more conditioning")
        x, cond = batch[0], ({"y": batch[1]} if len(batch) == 2 else {})
    elif isinstance(batch, Mapping):
        if "x" not in batch:
            raise ValueError(f"{where}: a dict batch needs the key 'x' (the data), got keys "
                             f"{sorted(map(str, batch))}")
        x, cond = batch["x"], {k: v for k, v in batch.items() if k != "x"}
    else:
        raise TypeError(f"{where}: a batch must be a tensor x, a tuple (x, y) or a dict with "
                        f"key 'x', got {type(batch).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"{where}: x must be a floating tensor of shape (B, *event_shape), got "
                         f"{x.dtype} of shape {tuple(x.shape)}")
    for key, value in cond.items():
        if isinstance(value, Tensor) and (value.dim() == 0 or value.shape[0] != x.shape[0]):
            n = value.shape[0] if value.dim() else "no"
            raise ValueError(f"{where}: {key} has {n} rows but x has {x.shape[0]}; each "
                             "conditioning tensor needs one row per sample")
    return x, check_cond(cond, x.shape[0], name=f"{where}: conditioning")


def _epoch_aware(data: object) -> list[Any]:
    """`data` and its sampler(s) that follow PyTorch's `set_epoch(epoch)` convention (e.g.
    `DistributedSampler`), each once."""
    batch_sampler = getattr(data, "batch_sampler", None)
    found: list[Any] = []
    for obj in (data, getattr(data, "sampler", None), batch_sampler,
                getattr(batch_sampler, "sampler", None)):
        if callable(getattr(obj, "set_epoch", None)) and all(obj is not o for o in found):
            found.append(obj)
    return found


class Trainer:
    r"""Train a [`ScoreModel`][scoresde.models.ScoreModel] by denoising score matching.

    **Arguments** (all keyword-only but `model`):

    - `lr`: peak learning rate; `warmup_steps`: linear warm-up
      $\text{lr}_k = \text{lr}\cdot\min(1, (k+1)/\text{warmup})$ for $k < \text{warmup}$.
    - `lr_schedule`: after the warm-up, `"constant"` (default), `"cosine"`
      $\text{lr}_k = \text{lr}_{\min} + (\text{lr} - \text{lr}_{\min})\,\tfrac12(1 + \cos\pi p)$
      or `"linear"` $\text{lr}_k = \text{lr} + (\text{lr}_{\min} - \text{lr})\,p$, with
      $p = (k - \text{warmup})/(\text{total} - \text{warmup})$ clipped to $[0, 1]$;
      `total_steps` (needed by both) and `lr_min` (default 0); see
      [`lr_at`][scoresde.training.trainer.Trainer.lr_at].
    - `optimizer`: `"adam"` or `"adamw"`; `weight_decay`.
    - `grad_clip`: max global gradient norm (`None`: no clipping).
    - `ema_decay`: EMA rate $\mu$, $\bar\theta \leftarrow \mu_k\bar\theta + (1-\mu_k)\theta$ with
      warm-up $\mu_k = \min(\mu, (1+k)/(10+k))$ at step $k$ (`None`: no EMA).
    - `batch_size`: the global batch of one optimizer step (of in-memory data and callables;
      an iterable brings its own batches), whatever the number of processes and
      `accumulate`.
    - `accumulate`: split each process's share of the step's batch into this many
      micro-batches, back-propagated one after the other (less activation memory, the same
      update up to rounding).
    - `precision`: `"float32"` (default), `"bfloat16"` (autocast) or `"float16"` (autocast
      with a `torch.amp.GradScaler`; meant for CUDA); parameters, optimizer state and EMA stay
      float32.
    - `weighting` and `importance_sampling` are passed to
      [`dsm_loss`][scoresde.losses.dsm_loss]; `loss_fn(model, batch, generator)` replaces the
      loss entirely (e.g. [`ddpm_loss`][scoresde.losses.ddpm_loss]); for conditional batches
      it is called as `loss_fn(model, batch, generator, cond=cond)`.
    - `cond_drop`: probability $p$ of replacing a sample's condition by the null condition
      (classifier-free guidance training, Ho & Salimans 2022); `null_cond`: that condition
      (default `{"y": net.null_label}`); see [`drop_cond`][scoresde.losses.drop_cond].
    - `hflip`: flip each image of a `(B, C, H, W)` batch left-right with probability 1/2
      (drawn from the trainer's generator).
    - `seed`: seeds the trainer's own generator (batches, flips, times, noise, dropout).
    - `checkpoint_dir`, `checkpoint_every`: write `last.pt` there every `checkpoint_every`
      steps (if given) and always at the end of `fit`.
    - `log_path`, `log_every`: a JSONL line every `log_every` steps (default path
      `checkpoint_dir/log.jsonl`; no log without either); `tensorboard=True` also writes
      TensorBoard scalars next to it (needs the `tensorboard` package).
    - `progress`: show a tqdm bar.
    - `meta`: extra JSON-able metadata stored in checkpoints (e.g. `{"data": "moons"}`).

    **Under torchrun** (`WORLD_SIZE > 1`) the Trainer joins the process group
    ([`distributed.init`][scoresde.training.distributed.init]: gloo on CPU, nccl on CUDA) and
    wraps the network in `DistributedDataParallel`. Every rank holds the same generator
    (from `seed`) and makes the same draws for the whole global batch — rows, flips, times,
    noise, dropout — then keeps its own contiguous slice
    ([`shard`][scoresde.training.distributed.shard]); DDP averages the gradients, each rank's
    loss being weighted by its share of rows, so `N` processes take the step one process
    takes (up to rounding), the EMA is identical on every rank, and a run resumes on another
    number of processes. Only rank 0 writes checkpoints (the unwrapped network), the log and
    the progress bar. A `DataLoader` with a `DistributedSampler` yields each rank its own
    rows instead (the global batch is then `N` times the loader's). An error on one rank
    (bad batch, NaN) stops every rank at the same step with that error; Ctrl-C (or SIGTERM)
    finishes the step on every rank, saves a checkpoint from rank 0, then raises
    `TrainingInterrupted` everywhere. See docs/distributed.md.

    The loss history is `trainer.losses` (one float per step, the mean over the global
    batch); `trainer.epoch` counts the completed passes over an iterable data source.
    """

    def __init__(self, model: ScoreModel, *, lr: float = 1e-3, optimizer: str = "adam",
                 weight_decay: float = 0.0, warmup_steps: int = 0,
                 grad_clip: float | None = 1.0, ema_decay: float | None = 0.999,
                 batch_size: int = 256, weighting: str = "sigma2",
                 importance_sampling: bool = False, loss_fn: LossFn | None = None,
                 cond_drop: float = 0.0, null_cond: Mapping[str, Tensor | float] | None = None,
                 hflip: bool = False, seed: int = 0, accumulate: int = 1,
                 precision: str = "float32", lr_schedule: str = "constant",
                 total_steps: int | None = None, lr_min: float = 0.0,
                 checkpoint_dir: str | os.PathLike | None = None,
                 checkpoint_every: int | None = None, log_path: str | os.PathLike | None = None,
                 log_every: int = 100, tensorboard: bool = False, progress: bool = True,
                 meta: dict[str, Any] | None = None) -> None:
        check_model(model)
        check_positive("lr", lr)
        check_choice("optimizer", optimizer, ("adam", "adamw"))
        check_choice("weighting", weighting, WEIGHTINGS)
        check_int("batch_size", batch_size, 1)
        check_int("warmup_steps", warmup_steps, 0)
        check_int("log_every", log_every, 1)
        self.accumulate = check_int("accumulate", accumulate, 1)
        self.precision = check_choice("precision", precision, PRECISIONS)
        self.lr_schedule = check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
        self.lr_min = check_real("lr_min", lr_min, low=0.0)
        if total_steps is not None:
            check_int("total_steps", total_steps, 1)
        if lr_schedule != "constant":
            if total_steps is None:
                raise ValueError(f"lr_schedule={lr_schedule!r} decays to lr_min over total_steps:"
                                 " pass total_steps= (the number of steps of the whole run)")
            if total_steps <= warmup_steps:
                raise ValueError(f"total_steps={total_steps} must exceed warmup_steps="
                                 f"{warmup_steps} for lr_schedule={lr_schedule!r}")
            if self.lr_min > lr:
                raise ValueError(f"lr_min={lr_min} must not exceed lr={lr}")
        self.total_steps = total_steps
        if grad_clip is not None:
            check_positive("grad_clip", grad_clip)
        if ema_decay is not None:
            check_real("ema_decay", ema_decay, low=0.0, high=1.0, high_open=True)
        if checkpoint_every is not None:
            check_int("checkpoint_every", checkpoint_every, 1)
        for name, flag in (("hflip", hflip), ("tensorboard", tensorboard)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {type(flag).__name__}")
        self.cond_drop = check_real("cond_drop", cond_drop, low=0.0, high=1.0)
        if self.cond_drop > 0 and loss_fn is not None:
            raise ValueError("cond_drop applies to the built-in dsm_loss; with loss_fn, drop the "
                             "condition in your loss (e.g. sd.ddpm_loss(model, batch, schedule, "
                             "generator, cond=cond, cond_drop=p))")
        self.null_cond = (resolve_null_cond(model, null_cond)
                          if self.cond_drop > 0 or null_cond is not None else None)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.scaler = self._check_precision(model, params)
        self.model = model
        # the network as the user gave it (maybe already in DDP) and the bare network, whose
        # state the checkpoints hold
        self._given_net = model.net
        self._net = distributed.unwrap(model.net)
        self._ddp: torch.nn.Module | None = (model.net if model.net is not self._net else None)
        self.lr, self.warmup_steps, self.grad_clip = float(lr), warmup_steps, grad_clip
        self.batch_size, self.weighting = batch_size, weighting
        self.importance_sampling = importance_sampling
        self.loss_fn = loss_fn
        self.ema_decay = ema_decay
        self.hflip = hflip
        opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
        self.optimizer = opt_cls(params, lr=self.lr, weight_decay=weight_decay)
        self.optimizer_name, self.weight_decay, self.seed = optimizer, weight_decay, seed
        self.ema_net = None
        if ema_decay is not None:
            self.ema_net = copy.deepcopy(self._net).requires_grad_(False)
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.step = 0
        self.losses: list[float] = []
        self.checkpoint_dir = _check_checkpoint_dir(checkpoint_dir)
        self.checkpoint_every = checkpoint_every
        self.log_path = _check_log_path(log_path)
        if self.log_path is None and self.checkpoint_dir is not None:
            self.log_path = self.checkpoint_dir / "log.jsonl"
        self.log_every, self.tensorboard = log_every, tensorboard
        if tensorboard:
            if self.log_path is None:
                raise ValueError("tensorboard=True writes next to the JSONL log: pass log_path= "
                                 "or checkpoint_dir=")
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise ImportError("tensorboard=True needs the tensorboard package (pip install "
                                  "tensorboard); the JSONL log needs nothing") from None
        self.progress = progress
        self.meta = dict(meta or {})
        self.event_shape: list[int] | None = None
        # position in an iterable data source: epoch, batches consumed in it, and the state of
        # the source's shuffling generator at the start of the epoch (for exact resume)
        self.epoch = 0
        self._epoch_batch = 0
        self._epoch_gen_state: Tensor | None = None
        self._live: tuple[object, Iterator] | None = None
        self._data_shards = 1       # DistributedSampler ranks the saved position refers to
        # the process group (only when torchrun asks for more than one process)
        self.world_size = distributed.init(device=model.device)
        self.rank = distributed.rank() if self.world_size > 1 else 0
        self._main = self.rank == 0

    def _check_precision(self, model: ScoreModel, params: list[Tensor]
                         ) -> torch.amp.GradScaler | None:
        """Check that `precision` suits the model; the float16 gradient scaler (else None)."""
        if self.precision == "float32":
            return None
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
        if dtypes != ["float32"]:
            raise ValueError(f"precision={self.precision!r} runs a float32 network under autocast;"
                             f" this network's parameters are {dtypes} (use precision='float32')")
        device = model.device
        if self.precision == "bfloat16" and device.type == "cuda" \
                and not torch.cuda.is_bf16_supported():
            raise ValueError("precision='bfloat16': this GPU does not support bfloat16; use "
                             "precision='float16'")
        if self.precision == "float16":
            return torch.amp.GradScaler(device.type)
        return None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "float32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float16
        return torch.autocast(self.model.device.type, dtype=dtype)

    def lr_at(self, step: int) -> float:
        r"""The learning rate of the update at step `step` (0-based): the linear warm-up, then
        the schedule (see the class docstring)."""
        if step < self.warmup_steps or self.lr_schedule == "constant":
            return self.lr * min(1.0, (step + 1) / max(1, self.warmup_steps))
        p = min(1.0, max(0.0, (step - self.warmup_steps)
                         / (self.total_steps - self.warmup_steps)))
        if self.lr_schedule == "cosine":
            return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))
        return self.lr + (self.lr_min - self.lr) * p

    # ----- data -----------------------------------------------------------------------
    def _draw_rows(self, kind: str, source: Any) -> Tensor:
        """`batch_size` row indices of a tensor or table source, drawn with replacement from
        the Trainer's generator (every rank draws the same: the global batch)."""
        n = source.shape[0] if kind == "tensor" else source["x"].shape[0]
        return torch.randint(0, n, (self.batch_size,), generator=self.generator,
                             device=self.generator.device)

    @staticmethod
    def _take(kind: str, source: Any, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Rows `idx` of a tensor or table source, as `(x, cond)`."""
        if kind == "tensor":
            return source[idx.to(source.device)], {}
        cond = {k: v[idx.to(v.device)] for k, v in source.items()}
        return cond.pop("x"), cond

    def _read(self, kind: str, source: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The next batch of a callable or iterable source, as `(x, cond)`."""
        if kind == "callable":
            return _split_batch(source(self.batch_size, self.generator),
                                "the batch returned by the data callable")
        where = f"batch {self._epoch_batch} of epoch {self.epoch} of the data"
        return _split_batch(self._next_from_iterable(source), where)

    def _source(self, data: DataSource) -> tuple[str, Any]:
        """The kind of data source, `"tensor" | "table" | "callable" | "iterable"`, and the
        source itself (a labelled data set `(x, y)` as the table `{"x": x, "y": y}`)."""
        if isinstance(data, Tensor):
            if data.dim() < 2 or data.shape[0] < 1 or not data.is_floating_point():
                raise ValueError(f"data must be a floating tensor of shape (N, *event_shape), "
                                 f"got {data.dtype} of shape {tuple(data.shape)}")
            return "tensor", data
        if isinstance(data, tuple):
            if not all(isinstance(v, Tensor) for v in data):
                raise TypeError("a tuple data set must be two tensors (x, y), got "
                                f"({', '.join(type(v).__name__ for v in data)}); for a sequence "
                                "of batches pass a list or a DataLoader")
            if len(data) != 2:
                raise ValueError(f"a tuple data set must be two tensors (x, y), got {len(data)}; "
                                 "use a dict {'x': x, ...} for more conditioning")
            return "table", self._check_table({"x": data[0], "y": data[1]})
        if isinstance(data, Mapping):
            return "table", self._check_table(data)
        if callable(data):
            return "callable", data
        if isinstance(data, (str, bytes)) or hasattr(data, "__array__"):
            raise TypeError(f"data must be a torch tensor, not {type(data).__name__} (convert "
                            "it with torch.as_tensor)")
        if isinstance(data, Dataset):
            raise TypeError(f"a {type(data).__name__} yields single samples; wrap it in a "
                            "torch.utils.data.DataLoader(dataset, batch_size=..., shuffle=True, "
                            "generator=torch.Generator().manual_seed(...))")
        if isinstance(data, Iterable):
            return "iterable", data
        raise TypeError("data must be a tensor (N, *event_shape), a labelled data set (x, y), "
                        "a callable (batch_size, generator) -> batch, or an iterable of batches "
                        f"(e.g. a DataLoader), got {type(data).__name__}")

    @staticmethod
    def _check_table(table: Mapping[str, object]) -> dict[str, Tensor]:
        if "x" not in table:
            raise ValueError(f"a dict data set needs the key 'x' (the data), got keys "
                             f"{sorted(map(str, table))}")
        x = table["x"]
        if not isinstance(x, Tensor):
            raise TypeError(f"data x must be a tensor, got {type(x).__name__}")
        if x.dim() < 2 or x.shape[0] < 1 or not x.is_floating_point():
            raise ValueError(f"data x must be a floating tensor of shape (N, *event_shape), "
                             f"got {x.dtype} of shape {tuple(x.shape)}")
        cond = {k: v for k, v in table.items() if k != "x"}
        for key, value in cond.items():
            if isinstance(value, Tensor) and (value.dim() == 0 or value.shape[0] != x.shape[0]):
                n = value.shape[0] if value.dim() else "no"
                raise ValueError(f"data {key} has {n} rows but x has {x.shape[0]}; each "
                                 "conditioning tensor needs one row per sample")
        return {"x": x, **check_cond(cond, x.shape[0], name="data")}

    def _next_batch(self, kind: str, source: Any, device: torch.device
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        if kind in ("tensor", "table"):
            x, cond = self._take(kind, source, self._draw_rows(kind, source))
        else:
            x, cond = self._read(kind, source)
        return x.to(device), {k: v.to(device) for k, v in cond.items()}

    def _new_epoch(self, source: Iterable) -> Iterator:
        """Start epoch `self.epoch`: remember the state of the source's generator (a
        `DataLoader`'s `generator`), call `set_epoch` where the source has it, `iter()`."""
        gen = getattr(source, "generator", None)
        self._epoch_gen_state = gen.get_state() if isinstance(gen, torch.Generator) else None
        for obj in _epoch_aware(source):
            obj.set_epoch(self.epoch)
        it = iter(source)
        self._live = (source, it)
        return it

    def _position(self, source: Iterable, shards: int = 1) -> None:
        """Put the iterator at the trainer's position (epoch, batch): the live one if `fit` is
        called again with the same source, else a fresh epoch, the source's generator set back
        to its state at the start of that epoch, with the consumed batches skipped.

        `shards`: the ranks a `DistributedSampler` splits the data into now (1 if none). A
        position saved with another split is converted at equal samples per rank and batch
        (batch `b` of `s` shards becomes batch `b s / shards`), with a warning."""
        if self._live is not None and self._live[0] is source:
            return
        self._live = None
        resumed = self.epoch > 0 or self._epoch_batch > 0
        if resumed and shards != self._data_shards:
            converted = self._epoch_batch * self._data_shards // shards
            warnings.warn(f"the data position was saved with the data split {self._data_shards} "
                          f"way(s) and is now split {shards} way(s): batch {self._epoch_batch} of "
                          f"epoch {self.epoch} becomes batch {converted}; the batches differ "
                          "from those of an uninterrupted run", stacklevel=4)
            self._epoch_batch = converted
        self._data_shards = shards
        gen = getattr(source, "generator", None)
        if self._epoch_gen_state is not None:
            if isinstance(gen, torch.Generator):
                try:
                    gen.set_state(self._epoch_gen_state)
                except (RuntimeError, TypeError) as e:
                    raise ValueError(f"cannot restore the data's generator to its state at the "
                                     f"start of epoch {self.epoch} ({e})") from None
            elif resumed:
                warnings.warn("the data's shuffling generator state was saved, but this data "
                              "source has no torch.Generator `generator`: the resumed batches "
                              "may differ from those of an uninterrupted run", stacklevel=4)
        elif resumed and isinstance(getattr(source, "sampler", None), RandomSampler) \
                and source.sampler.generator is None:
            warnings.warn("this DataLoader shuffles with the global random generator: the "
                          "resumed batches differ from those of an uninterrupted run; pass "
                          "generator=torch.Generator().manual_seed(...) for an exact resume",
                          stacklevel=4)
        it = self._new_epoch(source)
        for i in range(self._epoch_batch):
            try:
                next(it)
            except StopIteration:
                self._live = None
                raise ValueError(f"cannot continue at batch {self._epoch_batch} of epoch "
                                 f"{self.epoch}: the data yields only {i} batches per epoch "
                                 "now (is it the data the trainer was trained on?)") from None

    def _next_from_iterable(self, source: Iterable) -> object:
        _, it = self._live
        try:
            return next(it)
        except StopIteration:
            if self._epoch_batch == 0:
                raise ValueError(f"the data yielded no batches in epoch {self.epoch}") from None
        self.epoch += 1
        self._epoch_batch = 0
        try:
            return next(self._new_epoch(source))
        except StopIteration:
            once = (" (an iterator is used up after one pass: pass a re-iterable such as a list "
                    "or a DataLoader, or a callable)" if isinstance(source, Iterator) else "")
            raise ValueError(f"the data yielded no batches in epoch {self.epoch}{once}") from None

    def _epoch_value(self, kind: str, source: Any) -> float | int | None:
        """For the log: completed passes over an iterable; samples seen / data set size for
        in-memory data; `None` for a callable."""
        if kind == "iterable":
            return self.epoch
        if kind in ("tensor", "table"):
            n = source.shape[0] if kind == "tensor" else source["x"].shape[0]
            return self.step * self.batch_size / n
        return None

    def _flip(self, x: Tensor, total: int | None = None, rows: slice | None = None) -> Tensor:
        """Flip each image left-right (the last axis, W) with probability 1/2; with `total`
        and `rows`, the draws are those of a global batch of `total` images, of which `x` holds
        `rows`."""
        if x.dim() != 4:
            raise ValueError(f"hflip=True flips images of shape (B, C, H, W), but the batch has "
                             f"shape {tuple(x.shape)}")
        n = x.shape[0] if total is None else total
        flip = torch.rand(n, generator=self.generator, device=self.generator.device) < 0.5
        if rows is not None:
            flip = flip[rows]
        return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)

    def _loss(self, batch: Tensor, cond: dict[str, Tensor]) -> Tensor:
        if self.loss_fn is not None:
            if cond:
                return self.loss_fn(self.model, batch, self.generator, cond=cond)
            return self.loss_fn(self.model, batch, self.generator)
        return dsm_loss(self.model, batch, self.weighting, self.generator,
                        importance_sampling=self.importance_sampling, cond=cond or None,
                        cond_drop=self.cond_drop, null_cond=self.null_cond)

    def _backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    # ----- several processes, micro-batches ----------------------------------------------
    def _sharded_source(self, kind: str, source: Any) -> bool:
        """Whether an iterable source already gives each rank its own rows (a
        `DistributedSampler`); checks that it splits the data as many ways as there are
        ranks, and warns about an unseeded shuffle that every rank would do differently."""
        if kind != "iterable":
            return False
        batch_sampler = getattr(source, "batch_sampler", None)
        for obj in (source, getattr(source, "sampler", None), batch_sampler,
                    getattr(batch_sampler, "sampler", None)):
            n = getattr(obj, "num_replicas", None)
            if isinstance(n, int) and not isinstance(n, bool):
                r = getattr(obj, "rank", self.rank)
                if n != self.world_size or r != self.rank:
                    raise ValueError(f"the data's {type(obj).__name__} gives rank {r} of {n} its "
                                     f"share, but this is rank {self.rank} of {self.world_size} "
                                     "training processes")
                return n > 1
        if self.world_size > 1 and isinstance(getattr(source, "sampler", None), RandomSampler) \
                and source.sampler.generator is None:
            warnings.warn("several processes read this DataLoader, and it shuffles with the "
                          "global random generator, which differs between processes: each "
                          "takes its slice of a different batch. Pass generator=torch."
                          "Generator().manual_seed(...) (the same batches everywhere) or a "
                          "DistributedSampler (each process its own rows)", stacklevel=4)
        return False

    def _my_rows(self, kind: str, source: Any, sharded: bool, device: torch.device
                 ) -> tuple[Tensor, dict[str, Tensor], slice, int]:
        """This rank's rows of the step's global batch: `(x, cond, rows, total)`, where
        `rows` is their place in the global batch of `total` rows."""
        w, r = self.world_size, self.rank
        if kind in ("tensor", "table"):
            total = self.batch_size
            rows = distributed.shard(total, r, w)
            x, cond = self._take(kind, source, self._draw_rows(kind, source)[rows])
        else:
            x, cond = self._read(kind, source)
            if sharded:
                b = x.shape[0]
                total, rows = b * w, slice(r * b, (r + 1) * b)
            else:
                total = x.shape[0]
                rows = distributed.shard(total, r, w)
                x, cond = x[rows], {k: v[rows] for k, v in cond.items()}
        if rows.stop <= rows.start:
            raise ValueError(f"the batch of step {self.step} has {total} rows, fewer than the "
                             f"{w} processes (drop_last=True in the DataLoader, or a larger "
                             "batch)")
        return x.to(device), {k: v.to(device) for k, v in cond.items()}, rows, total

    def _draws(self, x: Tensor, cond: dict[str, Tensor], rows: slice, total: int
               ) -> dict[str, Any]:
        """The loss's random draws for the global batch, in the order `dsm_loss` makes them
        (times, noise, dropout mask), each rank keeping `rows`; for a custom `loss_fn`, one
        seed from which each micro-batch's generator derives."""
        g = self.generator
        if self.loss_fn is not None:
            return {"seed": int(torch.randint(0, 2 ** 62, (1,), generator=g, device=g.device)),
                    "cond": cond}
        t, iw = sample_time(self.model.sde, total, importance_sampling=self.importance_sampling,
                            generator=g, dtype=x.dtype, device=x.device)
        noise = torch.randn((total, *x.shape[1:]), generator=g, dtype=x.dtype, device=x.device)
        if self.cond_drop > 0:
            if not cond:
                raise ValueError(f"cond_drop={self.cond_drop} needs a condition to drop, but the "
                                 "batch has none (pass (x, y) batches)")
            # a global-batch-shaped condition whose rows `rows` are this rank's: the dropout
            # mask is the global draw
            spread = {k: v[(torch.arange(total, device=v.device) - rows.start)
                           .clamp(0, v.shape[0] - 1)] for k, v in cond.items()}
            cond = {k: v[rows] for k, v in
                    drop_cond(spread, self.cond_drop, self.null_cond, g).items()}
        return {"t": t[rows], "iw": iw[rows], "noise": noise[rows], "cond": cond}

    def _micro_loss(self, x: Tensor, draws: dict[str, Any], part: slice, index: int) -> Tensor:
        """The mean loss over the micro-batch `part` of this rank's rows."""
        cond = {k: v[part] for k, v in draws["cond"].items()}
        if self.loss_fn is not None:
            g = torch.Generator(device=self.generator.device).manual_seed(draws["seed"] + index)
            return (self.loss_fn(self.model, x[part], g, cond=cond) if cond
                    else self.loss_fn(self.model, x[part], g))
        weighting = "sigma2" if self.importance_sampling else self.weighting
        per = dsm_loss(self.model, x[part], weighting, cond=cond or None, t=draws["t"][part],
                       noise=draws["noise"][part], reduction="none")
        if self.importance_sampling:
            per = per * draws["iw"][part]
        return per.mean()

    def _sharded_step(self, kind: str, source: Any, sharded: bool, device: torch.device,
                      interrupt: _DeferredInterrupt) -> tuple[float, int, bool]:
        """One step over several processes and/or micro-batches, with two agreements (one
        small all-reduce each): after the batch and the draws, before any forward pass (DDP's
        forward may itself communicate, which a rank that failed would never join), and after
        the forward passes, before the last backward pass (DDP's gradient all-reduce); the
        second also sums the loss over the ranks. Micro-batches but the last are
        back-propagated without synchronisation. **Returns:** `(global mean loss, rows of the
        global batch, interrupted)`."""
        w, k = self.world_size, self.accumulate
        self.optimizer.zero_grad(set_to_none=True)
        what = f"at step {self.step}"

        def prepare() -> tuple[tuple[Tensor, dict[str, Any], int], list[float]]:
            x, cond, rows, total = self._my_rows(kind, source, sharded, device)
            if self.event_shape is None:
                self.event_shape = list(x.shape[1:])
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"training stopped at step {self.step}: the training batch "
                                 "contains NaN/Inf; the update was not applied"
                                 + self._last_good())
            if self.hflip:
                x = self._flip(x, total, rows)
            n = x.shape[0]
            return (x, self._draws(x, cond, rows, total), total), \
                [float(interrupt.requested), float(n), float(n * n)]

        (x, draws, total), (stop, s1, s2) = distributed.agree(prepare, 3, what=what)
        if sharded and abs(s2 * w - s1 * s1) > 0.5:
            raise ValueError(f"at step {self.step} the ranks' batches differ in size; a "
                             "DistributedSampler's DataLoader needs drop_last=True (or a data set "
                             "whose size the batches divide)")

        def forward() -> tuple[Tensor, list[float]]:
            n = x.shape[0]
            parts = [p for p in (slice(i * n // k, (i + 1) * n // k) for i in range(k))
                     if p.stop > p.start]
            contrib, last = 0.0, None
            for i, part in enumerate(parts):
                final = i == len(parts) - 1
                sync = (self._ddp.no_sync() if self._ddp is not None and not final
                        else contextlib.nullcontext())
                with sync:
                    with self._autocast():
                        loss = self._micro_loss(x, draws, part, self.rank * k + i)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise ValueError(f"training stopped at step {self.step}: the loss is "
                                         "NaN/Inf (network output or divergence); the update "
                                         "was not applied" + self._last_good())
                    m = part.stop - part.start
                    contrib += value * m / total
                    # DDP averages over the ranks: weight by this part's share of the batch
                    scaled = loss * (w * m / total)
                    if final:
                        last = scaled
                    else:
                        self._backward(scaled)
            return last, [contrib]

        last, (value,) = distributed.agree(forward, 1, what=what)
        self._backward(last)
        return value, total, stop > 0

    # ----- the loop ---------------------------------------------------------------------
    def fit(self, data: DataSource, steps: int) -> Trainer:
        """Train until `self.step == steps` (a resumed trainer continues from its step).

        `data` is a floating tensor `(N, *event_shape)`; a labelled data set, the tuple
        `(x, y)` of two tensors with `N` rows or a dict `{"x": x, **cond}`, whose rows are
        drawn jointly; a callable `(batch_size, generator) -> batch`; or an iterable of batches
        (a `DataLoader`), iterated again when it is exhausted (`self.epoch` counts the passes).
        A batch is a tensor `x`, a tuple `(x, y)` (the network gets `y=y`) or a dict with key
        `"x"` whose other entries are passed to the network as keyword arguments.

        Under torchrun every rank calls `fit` with the same data (and, when resuming, after
        loading the same checkpoint); see the class docstring.

        **Raises:** `ValueError` naming the step if a batch or the loss holds NaN/Inf; the
        update is not applied and no checkpoint is written after it, so the last good
        checkpoint stays intact. `TypeError`/`ValueError` for a malformed data source or batch.
        """
        kind, source = self._source(data)
        check_int("steps", steps, 0)
        device = self.model.device
        if kind == "tensor":
            source = source.to(device)
        elif kind == "table":
            source = {k: v.to(device) for k, v in source.items()}
        sharded = self._sharded_source(kind, source)
        need = self.world_size * self.accumulate
        if kind != "iterable" and self.batch_size < need:
            raise ValueError(f"batch_size={self.batch_size} is the global batch of a step; with "
                             f"{self.world_size} process(es) x accumulate={self.accumulate} it "
                             f"must be at least {need}")
        lock = self._lock()
        log = None
        many = self.world_size > 1
        try:
            if self._main:
                if self.checkpoint_dir is not None:
                    remove_orphans(self.checkpoint_dir, "*.pt.*.tmp")
                if self.log_path is not None:
                    remove_orphans(self.log_path.parent, self.log_path.name + ".*.tmp")
                    log = _StepLog(self.log_path, self.step, self.tensorboard)
            if many:
                self._sync_ranks(device)
            with _DeferredInterrupt(distributed=many) as interrupt:
                self._loop(kind, source, sharded, steps, device, interrupt, log)
            if self.checkpoint_dir is not None:
                self._checkpoint()
        except BaseException:
            self._live = None           # the next fit finds the position from the state
            if self._ddp is not None and self._ddp is not self._given_net:
                self._ddp = None        # its reducer may still await a backward: build anew
            raise
        finally:
            if log is not None:
                log.close()
            if lock is not None:
                lock.release()
        return self

    def _lock(self) -> RunLock | None:
        """The run lock on the checkpoint folder, held by rank 0 (every rank raises
        `LockedError` if it is taken)."""
        if self.checkpoint_dir is None:
            return None
        if self.world_size == 1:
            return RunLock(self.checkpoint_dir).acquire()
        lock, _ = distributed.agree(
            lambda: (RunLock(self.checkpoint_dir).acquire() if self._main else None, []),
            what="locking the checkpoint folder")
        return lock

    def _sync_ranks(self, device: torch.device) -> None:
        """Before training on several ranks: check that they are at the same point (step,
        generator, data position), wrap the network in DDP (which gives every rank rank 0's
        weights) and give every rank rank 0's EMA."""
        gen = hashlib.sha256(self.generator.get_state().cpu().numpy().tobytes()).hexdigest()
        mine = {"step": self.step, "losses": len(self.losses), "generator": gen[:16],
                "epoch": self.epoch, "batch": self._epoch_batch}
        every = distributed.all_gather_object(mine)
        for r, other in enumerate(every):
            if other != every[0]:
                raise ValueError(f"rank {r} is at {other}, rank 0 at {every[0]}: every rank must "
                                 "build the same trainer and load the same checkpoint "
                                 "(trainer.load(path) on every rank) before fit")
        if self._ddp is None:
            ids = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else None
            ddp = torch.nn.parallel.DistributedDataParallel
            # buffers are synced once, here, not before every forward pass (a collective that a
            # rank failing before its forward would never join); newer PyTorch renamed the flag
            flag = ("forward_sync_buffers" if "forward_sync_buffers"
                    in inspect.signature(ddp.__init__).parameters else "broadcast_buffers")
            self._ddp = ddp(self._net, device_ids=ids, **{flag: False})
        if self.ema_net is not None:
            distributed.broadcast_module(self.ema_net)

    def _loop(self, kind: str, source: Any, sharded: bool, steps: int, device: torch.device,
              interrupt: _DeferredInterrupt, log: _StepLog | None) -> None:
        self.model.train()
        bar = tqdm(total=steps, initial=self.step, disable=not self.progress or not self._main,
                   desc="train", dynamic_ncols=True)
        running = None
        many = self.world_size > 1
        # one process, one batch per step: the plain path (bit for bit as it always was)
        plain = not many and self.accumulate == 1
        if self._ddp is not None:
            self.model.net = self._ddp          # the forward passes go through DDP
        try:
            if kind == "iterable" and self.step < steps:
                self._position(source, self.world_size if sharded else 1)
            while self.step < steps:
                if not many and interrupt.requested:
                    self._stop_interrupted()
                lr = self.lr_at(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                if plain:
                    value, rows = self._plain_step(kind, source, device)
                    stop = False
                else:
                    value, rows, stop = self._sharded_step(kind, source, sharded, device,
                                                           interrupt)
                grad_norm = self._apply_update()
                self._update_ema()
                self.step += 1
                if kind == "iterable":
                    self._epoch_batch += 1
                self.losses.append(value)
                if log is not None:
                    log.record(rows, grad_norm)
                    if self.step % self.log_every == 0:
                        log.write(self.step, self.losses, lr, self._epoch_value(kind, source))
                running = value if running is None else 0.98 * running + 0.02 * value
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}", refresh=False)
                if stop and many:
                    self._stop_interrupted()
                if (self.checkpoint_every and self.step % self.checkpoint_every == 0
                        and self.checkpoint_dir is not None):
                    self._checkpoint()
            if many:
                _, (stop,) = distributed.agree(lambda: (None, [float(interrupt.requested)]), 1,
                                               what="at the end of training")
                if stop > 0:
                    self._stop_interrupted()
            elif interrupt.requested:
                self._stop_interrupted()
        finally:
            bar.close()
            self.model.net = self._given_net
            self.model.eval()

    def _plain_step(self, kind: str, source: Any, device: torch.device) -> tuple[float, int]:
        """One step of one process on one batch: forward, the NaN check, backward."""
        batch, cond = self._next_batch(kind, source, device)
        if self.event_shape is None:
            self.event_shape = list(batch.shape[1:])
        if self.hflip:
            batch = self._flip(batch)
        with self._autocast():
            loss = self._loss(batch, cond)
        value = loss.item()
        if not math.isfinite(value):
            what = ("the training batch contains NaN/Inf"
                    if not bool(torch.isfinite(batch).all())
                    else "the loss is NaN/Inf (network output or divergence)")
            raise ValueError(f"training stopped at step {self.step}: {what}; the update "
                             "was not applied" + self._last_good())
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(loss)
        return value, batch.shape[0]

    def _apply_update(self) -> float:
        """Clip the gradient (after unscaling it, in float16) and take the optimizer step.
        **Returns:** the global gradient norm before clipping. A NaN/Inf gradient is an error,
        except in float16, where the scaler skips the update and lowers its scale."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.grad_clip if self.grad_clip is not None else math.inf)
        grad_norm = float(norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)     # skipped when the gradient is not finite
            self.scaler.update()
            return grad_norm
        if not math.isfinite(grad_norm):
            raise ValueError(f"training stopped at step {self.step}: the gradient is "
                             "NaN/Inf (the loss was finite); the update was not applied"
                             + self._last_good())
        self.optimizer.step()
        return grad_norm

    def _checkpoint(self) -> Path:
        """Write `checkpoint_dir/last.pt` (rank 0; every rank learns whether it worked)."""
        path = self.checkpoint_dir / "last.pt"
        if self.world_size == 1:
            return self.save(path)
        distributed.agree(lambda: (self.save(path), []), what="writing the checkpoint")
        return path

    def _stop_interrupted(self) -> None:
        path = None
        if self.checkpoint_dir is not None:
            path = self._checkpoint()
        raise TrainingInterrupted(self.step, path)

    def _last_good(self) -> str:
        if self.checkpoint_dir is not None and (self.checkpoint_dir / "last.pt").exists():
            return f"; the last good checkpoint is {self.checkpoint_dir / 'last.pt'}"
        return ""

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_net is None:
            return
        ema = list(self.ema_net.parameters())
        cur = list(self._net.parameters())
        # warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates): early on the
        # average must not be dominated by the random initial weights
        decay = min(self.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        torch._foreach_lerp_(ema, cur, 1.0 - decay)
        for b_ema, b in zip(self.ema_net.buffers(), self._net.buffers(), strict=True):
            b_ema.copy_(b)

    def ema_model(self) -> ScoreModel:
        """A copy of the model with the EMA weights (the model itself if there is no EMA)."""
        if self.ema_net is None:
            return self.model
        return ScoreModel(copy.deepcopy(self.ema_net), self.model.sde,
                          prediction=self.model.prediction).eval()

    # ----- checkpoints ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The checkpoint's contents: the bare network's weights (never a DDP wrapper's), EMA,
        optimizer, generator, step, losses, data position and metadata."""
        net = self._net
        meta: dict[str, Any] = {
            "sde": self.model.sde.config(), "prediction": self.model.prediction,
            "net_class": type(net).__name__,
            "net": net.config() if hasattr(net, "config") else None,
            "trainer": {"lr": self.lr, "optimizer": self.optimizer_name,
                        "weight_decay": self.weight_decay, "warmup_steps": self.warmup_steps,
                        "grad_clip": self.grad_clip, "ema_decay": self.ema_decay,
                        "batch_size": self.batch_size, "weighting": self.weighting,
                        "importance_sampling": self.importance_sampling, "seed": self.seed,
                        "hflip": self.hflip, "cond_drop": self.cond_drop,
                        "null_cond": _plain(self.null_cond), "log_every": self.log_every,
                        "accumulate": self.accumulate, "precision": self.precision,
                        "lr_schedule": self.lr_schedule, "total_steps": self.total_steps,
                        "lr_min": self.lr_min},
            "world_size": self.world_size,
            "versions": {"scoresde": __version__, "torch": str(torch.__version__)},
            **({"event_shape": self.event_shape} if self.event_shape is not None else {}),
            **self.meta,
        }
        return {"step": self.step, "model": net.state_dict(),
                "ema": self.ema_net.state_dict() if self.ema_net is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "generator": self.generator.get_state(), "losses": list(self.losses),
                "data_state": {"epoch": self.epoch, "batch": self._epoch_batch,
                               "generator": self._epoch_gen_state,
                               "shards": self._data_shards},
                "meta": meta}

    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint atomically (see
        [`scoresde.training.checkpoint`][scoresde.training.checkpoint]). Under torchrun only
        rank 0 writes (every rank gets the path back)."""
        if not self._main:
            return Path(path)
        return save_checkpoint(self.state(), path)

    def load(self, path: str | os.PathLike) -> Trainer:
        """Restore model, EMA, optimizer, generator, step, losses and the position in an
        iterable data source (epoch, batch, the source's generator state at the start of the
        epoch) from a checkpoint.

        Everything is checked before anything is changed (the SDE, the prediction, the
        network's parameter names and shapes, the other sections); if applying still fails,
        the trainer is restored as it was. A checkpoint saved without EMA loaded into an EMA
        trainer starts the EMA from the loaded weights (with a warning), never from the
        trainer's random initialisation.
        """
        ckpt = load_checkpoint(path)
        meta = ckpt.get("meta") or {}
        where = f"checkpoint {str(path)!r}"
        cfg = self.model.sde.config()
        if meta.get("sde") != cfg:
            raise ValueError(f"{where}: its SDE {meta.get('sde')} != the trainer's SDE {cfg}")
        if meta.get("prediction") != self.model.prediction:
            raise ValueError(f"{where} was trained with prediction={meta.get('prediction')!r}; "
                             f"this model predicts {self.model.prediction!r}")
        _check_state("model", ckpt.get("model"), self._net.state_dict(), where)
        ema_state = ckpt.get("ema")
        if self.ema_net is not None and ema_state is not None:
            _check_state("ema", ema_state, self.ema_net.state_dict(), where)
        for key, kind in (("optimizer", dict), ("generator", Tensor), ("losses", list)):
            if not isinstance(ckpt.get(key), kind):
                raise ValueError(f"{where}: section {key!r} is missing or not a {kind.__name__}")
        step = ckpt.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{where}: step must be a non-negative integer, got {step!r}")
        epoch, batch, gen_state, shards = _data_state(ckpt.get("data_state"), where)
        scaler_state = ckpt.get("scaler")
        snapshot = self._snapshot()
        try:
            self._net.load_state_dict(ckpt["model"])
            if self.ema_net is not None:
                if ema_state is not None:
                    self.ema_net.load_state_dict(ema_state)
                else:
                    warnings.warn(f"{where} has no EMA weights; the trainer's EMA starts from "
                                  "the loaded model weights", stacklevel=2)
                    self.ema_net.load_state_dict(self._net.state_dict())
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scaler is not None and isinstance(scaler_state, dict):
                self.scaler.load_state_dict(scaler_state)
            self.generator.set_state(ckpt["generator"].cpu())
        except Exception as e:
            self._restore(snapshot)
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{where} could not be applied ({type(e).__name__}: {first}); "
                             "the trainer is unchanged") from None
        self.step = step
        self.losses = [float(v) for v in ckpt["losses"]]
        self.epoch, self._epoch_batch, self._epoch_gen_state = epoch, batch, gen_state
        self._data_shards = shards
        self._live = None
        return self

    def _snapshot(self) -> dict[str, Any]:
        clone = lambda sd: {k: v.detach().clone() for k, v in sd.items()}  # noqa: E731
        return {"model": clone(self._net.state_dict()),
                "ema": clone(self.ema_net.state_dict()) if self.ema_net is not None else None,
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "generator": self.generator.get_state()}

    def _restore(self, snap: dict[str, Any]) -> None:
        self._net.load_state_dict(snap["model"])
        if snap["ema"] is not None:
            self.ema_net.load_state_dict(snap["ema"])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.generator.set_state(snap["generator"])


def _plain(cond: Mapping[str, Tensor | float] | None) -> dict[str, Any] | None:
    """A null condition as JSON-able numbers and lists (for the checkpoint's metadata)."""
    if cond is None:
        return None
    return {k: v.tolist() if isinstance(v, Tensor) else v for k, v in cond.items()}


def _data_state(state: object, where: str) -> tuple[int, int, Tensor | None, int]:
    """The checked `data_state` section: `(epoch, batch, generator state, shards)`, `shards`
    being the number of ranks a `DistributedSampler` split the data into (1: every rank read
    the same batches); a checkpoint written before it existed starts at epoch 0, batch 0."""
    if state is None:
        return 0, 0, None, 1
    if not isinstance(state, dict):
        raise ValueError(f"{where}: section 'data_state' is not a dict")
    epoch, batch, gen = state.get("epoch"), state.get("batch"), state.get("generator")
    shards = state.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"{where}: data_state shards must be a positive integer, got {shards!r}")
    for name, v in (("epoch", epoch), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{where}: data_state {name} must be a non-negative integer, "
                             f"got {v!r}")
    if gen is not None and not isinstance(gen, Tensor):
        raise ValueError(f"{where}: data_state generator must be a tensor or None")
    return epoch, batch, gen, shards


def _check_state(name: str, state: object, ref: dict[str, Tensor], where: str) -> None:
    """A state dict with exactly `ref`'s keys and shapes (else `ValueError` naming them)."""
    if not isinstance(state, dict):
        raise ValueError(f"{where}: section {name!r} is missing or not a state dict")
    missing, extra = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
    if missing or extra:
        raise ValueError(f"{where}: {name} weights do not match the network (missing "
                         f"{missing[:3]}, unexpected {extra[:3]})")
    bad = [k for k in ref if not isinstance(state[k], Tensor) or state[k].shape != ref[k].shape]
    if bad:
        k = bad[0]
        got = tuple(state[k].shape) if isinstance(state[k], Tensor) else type(state[k]).__name__
        raise ValueError(f"{where}: {name} weight {k!r} has shape {got}, the network has "
                         f"{tuple(ref[k].shape)}")
