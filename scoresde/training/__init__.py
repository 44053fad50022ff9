"""Training: the `Trainer` loop around `dsm_loss` and atomic, weights-only checkpoints."""

from .checkpoint import FORMAT, load_checkpoint, load_model, save_checkpoint
from .trainer import Trainer

__all__ = ["Trainer", "save_checkpoint", "load_checkpoint", "load_model", "FORMAT"]
