"""Fault injection for training: SIGKILL a training process at random moments, resume from
its checkpoint folder, and check that the result is bit-for-bit that of an uninterrupted run.

Used by the test suite (a few trials, forked processes) and by
`benchmarks/bench_fault_injection.py` (many trials, fresh interpreters). The training job is
small and fully determined by its arguments, so any difference is a resume defect.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import sample_toy
from ..models import ScoreModel
from ..nets import MLPScoreNet
from ..sdes import VPSDE
from .checkpoint import load_checkpoint
from .trainer import Trainer

__all__ = ["training_job", "run_training", "final_state", "KillTrial", "kill_and_resume"]


def training_job(folder: str | os.PathLike | None, *, seed: int = 0) -> Trainer:
    """The reference job: an MLP on the 8 Gaussians, EMA, warm-up, likelihood weighting with
    importance sampling, a checkpoint after every step in `folder`."""
    net = MLPScoreNet(dim=2, hidden=32, depth=2, generator=torch.Generator().manual_seed(seed))
    model = ScoreModel(net, VPSDE(), prediction="eps")
    return Trainer(model, lr=2e-3, batch_size=64, warmup_steps=5, ema_decay=0.95, seed=seed,
                   weighting="likelihood", importance_sampling=True, progress=False,
                   checkpoint_dir=folder, checkpoint_every=1 if folder is not None else None)


def _data() -> torch.Tensor:
    return sample_toy("eight_gaussians", 4096, generator=torch.Generator().manual_seed(123))


def run_training(folder: str | os.PathLike | None, steps: int) -> Trainer:
    """Run the job to `steps`, resuming from `folder/last.pt` when it exists."""
    trainer = training_job(folder)
    if folder is not None and (Path(folder) / "last.pt").exists():
        trainer.load(Path(folder) / "last.pt")
    return trainer.fit(_data(), steps=steps)


def final_state(trainer: Trainer) -> dict[str, object]:
    """What must match bit for bit: weights, EMA, optimizer moments, losses, generator."""
    return {"model": trainer.model.net.state_dict(), "ema": trainer.ema_net.state_dict(),
            "optimizer": trainer.optimizer.state_dict()["state"], "losses": list(trainer.losses),
            "generator": trainer.generator.get_state(), "step": trainer.step}


def same(a: object, b: object) -> bool:
    """Bitwise equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@dataclass
class KillTrial:
    """One trial: the delay before SIGKILL, the step the checkpoint had reached, whether the
    process had already finished, and whether the resumed run matched bit for bit."""

    delay_s: float
    killed_at_step: int | None
    finished_before_kill: bool
    orphans_seen: int
    identical: bool


def kill_and_resume(folder: str | os.PathLike, steps: int, delay_s: float,
                    reference: dict[str, object]) -> KillTrial:
    """Fork a process that trains into `folder`, SIGKILL it after `delay_s`, resume here and
    compare with `reference` (`final_state` of an uninterrupted run)."""
    folder = Path(folder)
    pid = os.fork()
    if pid == 0:                                            # the child: train, then vanish
        code = 0
        try:
            run_training(folder, steps)
        except BaseException:
            code = 1
        os._exit(code)
    time.sleep(delay_s)
    finished = False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        finished = True
    _, status = os.waitpid(pid, 0)
    finished = finished or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
    orphans = len(list(folder.glob("*.tmp")))
    at = load_checkpoint(folder / "last.pt")["step"] if (folder / "last.pt").exists() else None
    resumed = run_training(folder, steps)
    return KillTrial(delay_s, at, finished, orphans, same(final_state(resumed), reference))


def random_delays(n: int, span_s: float, seed: int) -> list[float]:
    """`n` kill delays spread over `[0, span_s]` (stratified, so early and late kills both
    occur), reproducible from `seed`."""
    rng = random.Random(seed)
    return [span_s * (i + rng.random()) / n for i in range(n)]
