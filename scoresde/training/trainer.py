r"""A thin training loop around [`dsm_loss`][scoresde.losses.dsm_loss].

Adam/AdamW with linear learning-rate warm-up, gradient-norm clipping, an exponential moving
average (EMA) of the weights (Polyak averaging, as in Ho et al. 2020 and Song et al. 2021),
a tqdm progress bar with the running loss, atomic checkpoints and exact resume: the
trainer's own `torch.Generator` state is checkpointed with the optimizer, so a run resumed
from step `k` reaches the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..files import RunLock, remove_orphans
from ..losses import WEIGHTINGS, dsm_loss
from ..models import ScoreModel, check_model
from ..validation import check_choice, check_int, check_positive, check_real
from ..version import __version__
from .checkpoint import load_checkpoint, save_checkpoint

Tensor = torch.Tensor
DataSource = Tensor | Callable[[int, torch.Generator], Tensor]
LossFn = Callable[[ScoreModel, Tensor, torch.Generator], Tensor]

__all__ = ["Trainer", "TrainingInterrupted"]


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
    and only when Python's default SIGINT handler is installed (others are left alone)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _DeferredInterrupt:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _check_checkpoint_dir(folder: str | os.PathLike | None) -> Path | None:
    """The checkpoint folder, checked when the Trainer is made (not at the first save)."""
    if folder is None:
        return None
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"checkpoint_dir must be a path or None, got {type(folder).__name__}")
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise ValueError(f"checkpoint_dir {str(p)!r} exists and is not a folder")
    p.mkdir(parents=True, exist_ok=True)
    if not os.access(p, os.W_OK | os.X_OK):
        raise PermissionError(f"checkpoint_dir {str(p)!r} is not writable")
    return p


class Trainer:
    r"""Train a [`ScoreModel`][scoresde.models.ScoreModel] by denoising score matching.

    **Arguments** (all keyword-only but `model`):

    - `lr`: peak learning rate; `warmup_steps`: linear warm-up
      $\text{lr}_k = \text{lr}\cdot\min(1, (k+1)/\text{warmup})$.
    - `optimizer`: `"adam"` or `"adamw"`; `weight_decay`.
    - `grad_clip`: max global gradient norm (`None`: no clipping).
    - `ema_decay`: EMA rate $\mu$, $\bar\theta \leftarrow \mu_k\bar\theta + (1-\mu_k)\theta$ with
      warm-up $\mu_k = \min(\mu, (1+k)/(10+k))$ at step $k$ (`None`: no EMA).
    - `batch_size`; `weighting` and `importance_sampling` are passed to
      [`dsm_loss`][scoresde.losses.dsm_loss]; `loss_fn(model, batch, generator)` replaces the
      loss entirely (e.g. [`ddpm_loss`][scoresde.losses.ddpm_loss]).
    - `seed`: seeds the trainer's own generator (batches, times, noise).
    - `checkpoint_dir`, `checkpoint_every`: write `last.pt` there every `checkpoint_every`
      steps (if given) and always at the end of `fit`.
    - `progress`: show a tqdm bar.
    - `meta`: extra JSON-able metadata stored in checkpoints (e.g. `{"data": "moons"}`).

    The loss history is `trainer.losses` (one float per step).
    """

    def __init__(self, model: ScoreModel, *, lr: float = 1e-3, optimizer: str = "adam",
                 weight_decay: float = 0.0, warmup_steps: int = 0,
                 grad_clip: float | None = 1.0, ema_decay: float | None = 0.999,
                 batch_size: int = 256, weighting: str = "sigma2",
                 importance_sampling: bool = False, loss_fn: LossFn | None = None,
                 seed: int = 0, checkpoint_dir: str | os.PathLike | None = None,
                 checkpoint_every: int | None = None, progress: bool = True,
                 meta: dict[str, Any] | None = None) -> None:
        check_model(model)
        check_positive("lr", lr)
        check_choice("optimizer", optimizer, ("adam", "adamw"))
        check_choice("weighting", weighting, WEIGHTINGS)
        check_int("batch_size", batch_size, 1)
        check_int("warmup_steps", warmup_steps, 0)
        if grad_clip is not None:
            check_positive("grad_clip", grad_clip)
        if ema_decay is not None:
            check_real("ema_decay", ema_decay, low=0.0, high=1.0, high_open=True)
        if checkpoint_every is not None:
            check_int("checkpoint_every", checkpoint_every, 1)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.model = model
        self.lr, self.warmup_steps, self.grad_clip = float(lr), warmup_steps, grad_clip
        self.batch_size, self.weighting = batch_size, weighting
        self.importance_sampling = importance_sampling
        self.loss_fn = loss_fn
        self.ema_decay = ema_decay
        opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
        self.optimizer = opt_cls(params, lr=self.lr, weight_decay=weight_decay)
        self.optimizer_name, self.weight_decay, self.seed = optimizer, weight_decay, seed
        self.ema_net = None
        if ema_decay is not None:
            self.ema_net = copy.deepcopy(model.net).requires_grad_(False)
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.step = 0
        self.losses: list[float] = []
        self.checkpoint_dir = _check_checkpoint_dir(checkpoint_dir)
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.meta = dict(meta or {})
        self.event_shape: list[int] | None = None

    # ----- data -----------------------------------------------------------------------
    def _batch(self, data: DataSource) -> Tensor:
        if callable(data) and not isinstance(data, Tensor):
            return data(self.batch_size, self.generator)
        idx = torch.randint(0, data.shape[0], (self.batch_size,), generator=self.generator,
                            device=self.generator.device)
        return data[idx.to(data.device)]

    def _check_data(self, data: DataSource) -> None:
        if isinstance(data, Tensor):
            if data.dim() < 2 or data.shape[0] < 1 or not data.is_floating_point():
                raise ValueError(f"data must be a floating tensor of shape (N, *event_shape), "
                                 f"got {data.dtype} of shape {tuple(data.shape)}")
        elif not callable(data):
            raise TypeError("data must be a tensor (N, *event_shape) or a callable "
                            f"(batch_size, generator) -> batch, got {type(data).__name__}")

    def _loss(self, batch: Tensor) -> Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(self.model, batch, self.generator)
        return dsm_loss(self.model, batch, self.weighting, self.generator,
                        importance_sampling=self.importance_sampling)

    # ----- the loop ---------------------------------------------------------------------
    def fit(self, data: DataSource, steps: int) -> Trainer:
        """Train until `self.step == steps` (a resumed trainer continues from its step).

        **Raises:** `ValueError` naming the step if a batch or the loss holds NaN/Inf; the
        update is not applied and no checkpoint is written after it, so the last good
        checkpoint stays intact.
        """
        self._check_data(data)
        check_int("steps", steps, 0)
        device = self.model.device
        if isinstance(data, Tensor):
            data = data.to(device)
        lock = RunLock(self.checkpoint_dir).acquire() if self.checkpoint_dir is not None else None
        try:
            if self.checkpoint_dir is not None:
                remove_orphans(self.checkpoint_dir, "*.pt.*.tmp")
            with _DeferredInterrupt() as interrupt:
                self._loop(data, steps, device, interrupt)
            if self.checkpoint_dir is not None:
                self.save(self.checkpoint_dir / "last.pt")
        finally:
            if lock is not None:
                lock.release()
        return self

    def _loop(self, data: DataSource, steps: int, device: torch.device,
              interrupt: _DeferredInterrupt) -> None:
        self.model.train()
        bar = tqdm(total=steps, initial=self.step, disable=not self.progress, desc="train",
                   dynamic_ncols=True)
        running = None
        try:
            while self.step < steps:
                if interrupt.requested:
                    self._stop_interrupted()
                batch = self._batch(data).to(device)
                if self.event_shape is None:
                    self.event_shape = list(batch.shape[1:])
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr * min(1.0, (self.step + 1) / max(1, self.warmup_steps))
                loss = self._loss(batch)
                value = loss.item()
                if not math.isfinite(value):
                    what = ("the training batch contains NaN/Inf"
                            if not bool(torch.isfinite(batch).all())
                            else "the loss is NaN/Inf (network output or divergence)")
                    raise ValueError(f"training stopped at step {self.step}: {what}; the update "
                                     "was not applied" + self._last_good())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(
                    self.model.parameters(),
                    self.grad_clip if self.grad_clip is not None else math.inf)
                if not math.isfinite(float(norm)):
                    raise ValueError(f"training stopped at step {self.step}: the gradient is "
                                     "NaN/Inf (the loss was finite); the update was not applied"
                                     + self._last_good())
                self.optimizer.step()
                self._update_ema()
                self.step += 1
                self.losses.append(value)
                running = value if running is None else 0.98 * running + 0.02 * value
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}", refresh=False)
                if (self.checkpoint_every and self.step % self.checkpoint_every == 0
                        and self.checkpoint_dir is not None):
                    self.save(self.checkpoint_dir / "last.pt")
            if interrupt.requested:
                self._stop_interrupted()
        finally:
            bar.close()
            self.model.eval()

    def _stop_interrupted(self) -> None:
        path = None
        if self.checkpoint_dir is not None:
            path = self.save(self.checkpoint_dir / "last.pt")
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
        cur = list(self.model.net.parameters())
        # warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates): early on the
        # average must not be dominated by the random initial weights
        decay = min(self.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        torch._foreach_lerp_(ema, cur, 1.0 - decay)
        for b_ema, b in zip(self.ema_net.buffers(), self.model.net.buffers(), strict=True):
            b_ema.copy_(b)

    def ema_model(self) -> ScoreModel:
        """A copy of the model with the EMA weights (the model itself if there is no EMA)."""
        if self.ema_net is None:
            return self.model
        return ScoreModel(copy.deepcopy(self.ema_net), self.model.sde,
                          prediction=self.model.prediction).eval()

    # ----- checkpoints ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        net = self.model.net
        meta: dict[str, Any] = {
            "sde": self.model.sde.config(), "prediction": self.model.prediction,
            "net_class": type(net).__name__,
            "net": net.config() if hasattr(net, "config") else None,
            "trainer": {"lr": self.lr, "optimizer": self.optimizer_name,
                        "weight_decay": self.weight_decay, "warmup_steps": self.warmup_steps,
                        "grad_clip": self.grad_clip, "ema_decay": self.ema_decay,
                        "batch_size": self.batch_size, "weighting": self.weighting,
                        "importance_sampling": self.importance_sampling, "seed": self.seed},
            "versions": {"scoresde": __version__, "torch": str(torch.__version__)},
            **({"event_shape": self.event_shape} if self.event_shape is not None else {}),
            **self.meta,
        }
        return {"step": self.step, "model": net.state_dict(),
                "ema": self.ema_net.state_dict() if self.ema_net is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "losses": list(self.losses),
                "meta": meta}

    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint atomically (see
        [`scoresde.training.checkpoint`][scoresde.training.checkpoint])."""
        return save_checkpoint(self.state(), path)

    def load(self, path: str | os.PathLike) -> Trainer:
        """Restore model, EMA, optimizer, generator, step and losses from a checkpoint.

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
        _check_state("model", ckpt.get("model"), self.model.net.state_dict(), where)
        ema_state = ckpt.get("ema")
        if self.ema_net is not None and ema_state is not None:
            _check_state("ema", ema_state, self.ema_net.state_dict(), where)
        for key, kind in (("optimizer", dict), ("generator", Tensor), ("losses", list)):
            if not isinstance(ckpt.get(key), kind):
                raise ValueError(f"{where}: section {key!r} is missing or not a {kind.__name__}")
        step = ckpt.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{where}: step must be a non-negative integer, got {step!r}")
        snapshot = self._snapshot()
        try:
            self.model.net.load_state_dict(ckpt["model"])
            if self.ema_net is not None:
                if ema_state is not None:
                    self.ema_net.load_state_dict(ema_state)
                else:
                    warnings.warn(f"{where} has no EMA weights; the trainer's EMA starts from "
                                  "the loaded model weights", stacklevel=2)
                    self.ema_net.load_state_dict(self.model.net.state_dict())
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.generator.set_state(ckpt["generator"].cpu())
        except Exception as e:
            self._restore(snapshot)
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{where} could not be applied ({type(e).__name__}: {first}); "
                             "the trainer is unchanged") from None
        self.step = step
        self.losses = [float(v) for v in ckpt["losses"]]
        return self

    def _snapshot(self) -> dict[str, Any]:
        clone = lambda sd: {k: v.detach().clone() for k, v in sd.items()}  # noqa: E731
        return {"model": clone(self.model.net.state_dict()),
                "ema": clone(self.ema_net.state_dict()) if self.ema_net is not None else None,
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "generator": self.generator.get_state()}

    def _restore(self, snap: dict[str, Any]) -> None:
        self.model.net.load_state_dict(snap["model"])
        if snap["ema"] is not None:
            self.ema_net.load_state_dict(snap["ema"])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.generator.set_state(snap["generator"])


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
