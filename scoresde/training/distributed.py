r"""Training and evaluation past one process, with `torch.distributed` (launched by torchrun).

`torchrun --nproc-per-node N ...` starts `N` copies of a script (or `-m scoresde`) and tells
each its place through the environment: `RANK` (`0 … WORLD_SIZE-1`), `WORLD_SIZE`,
`LOCAL_RANK` (the index on its machine, hence its GPU) and the rendezvous address.
[`init`][scoresde.training.distributed.init] joins that process group — `gloo` for CPU
tensors, `nccl` for CUDA — and only when `WORLD_SIZE > 1`: a plain single process (no
torchrun) never touches `torch.distributed` and runs exactly as before. A process group the
user initialised (`torch.distributed.init_process_group`, `mp.spawn`) is used as it is.

The helpers are no-ops in one process, so the same code runs under any launch:
[`rank`][scoresde.training.distributed.rank], `world_size`, `is_main`, `barrier`,
`all_reduce_sum`, `all_reduce_mean`, `broadcast`, `broadcast_module`, `shard` (the rows of a
global batch that a rank owns), `unwrap` (the network inside a `DistributedDataParallel`)
and [`agree`][scoresde.training.distributed.agree], which makes an error on one rank an
error on every rank instead of a hang.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from ..files import LockedError
from ..samplers import SamplingError

__all__ = ["init", "shutdown", "is_initialized", "world_size", "rank", "local_rank", "is_main",
           "default_device", "comm_device", "barrier", "all_reduce_sum", "all_reduce_mean", "broadcast",
           "broadcast_module", "all_gather_object", "shard", "unwrap", "agree", "run_on_every_rank",
           "rank_and_world", "RankError"]

R = TypeVar("R")

#: whether this module created the process group (and so destroys it at exit)
_created = {"group": False}


class RankError(RuntimeError):
    """Another rank failed; the message names the rank and repeats its error."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (it is set "
                         "by torchrun; do not set it by hand)") from None


def is_initialized() -> bool:
    """Whether a `torch.distributed` process group is up in this process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _current_world() -> int:
    if is_initialized():
        return torch.distributed.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def _current_rank() -> int:
    if is_initialized():
        return torch.distributed.get_rank()
    return _env_int("RANK", 0)


def rank_and_world() -> tuple[int, int]:
    """``(rank, size)`` of the initialised process group, ``(0, 1)`` without one (unlike
    `rank` and `world_size`, never read from the environment: what a collective will see)."""
    if is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def world_size() -> int:
    """The number of processes: the process group's size, else `WORLD_SIZE` (1 without
    torchrun)."""
    return _current_world()


def rank() -> int:
    """This process's rank: the process group's, else `RANK` (0 without torchrun)."""
    return _current_rank()


def local_rank() -> int:
    """This process's index on its machine (`LOCAL_RANK`, 0 without torchrun): its GPU."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Whether this is rank 0, the process that writes checkpoints, logs and prints."""
    return rank() == 0


def default_device() -> torch.device:
    """`cuda:LOCAL_RANK` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def init(device: torch.device | str | None = None, backend: str | None = None) -> int:
    """Join the process group that torchrun describes in the environment, once.

    Does nothing (and returns 1) when `WORLD_SIZE` is unset or 1; returns the existing
    group's size when one is already initialised. Otherwise calls
    `torch.distributed.init_process_group` with `backend` (default: `"nccl"` when `device`
    is a CUDA device, else `"gloo"`), makes `device` the current CUDA device, and destroys the
    group at interpreter exit ([`shutdown`][scoresde.training.distributed.shutdown]).

    **Returns:** the world size.
    """
    if is_initialized():
        return torch.distributed.get_world_size()
    n = _env_int("WORLD_SIZE", 1)
    if n <= 1:
        return 1
    if not torch.distributed.is_available():
        raise RuntimeError(f"WORLD_SIZE={n} asks for {n} processes, but this PyTorch build has "
                           "no torch.distributed")
    device = torch.device(device) if device is not None else default_device()
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device if device.index is not None else default_device())
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={n} but {', '.join(missing)} unset: launch with torchrun "
                           "(torchrun --nproc-per-node N ...), which sets them")
    torch.distributed.init_process_group(backend)
    _created["group"] = True
    atexit.register(shutdown)
    return torch.distributed.get_world_size()


def shutdown() -> None:
    """Destroy the process group if [`init`][scoresde.training.distributed.init] created it
    (a group the user created is left to the user)."""
    if _created["group"] and is_initialized():
        torch.distributed.destroy_process_group()
    _created["group"] = False


def _active() -> bool:
    return is_initialized() and torch.distributed.get_world_size() > 1


def comm_device() -> torch.device:
    """The device of tensors passed to collectives: the current CUDA device for `nccl`, else
    the CPU."""
    if is_initialized() and "nccl" in str(torch.distributed.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank arrives (no-op in one process)."""
    if _active():
        torch.distributed.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over the ranks (a new tensor; `x` itself in one process)."""
    if not _active():
        return x
    y = x.detach().clone()
    torch.distributed.all_reduce(y)
    return y


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of `x` over the ranks (a new tensor; `x` itself in one process)."""
    if not _active():
        return x
    return all_reduce_sum(x) / torch.distributed.get_world_size()


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `x` in place with rank `src`'s `x` (no-op in one process); returns `x`."""
    if _active():
        torch.distributed.broadcast(x, src)
    return x


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> nn.Module:
    """Give every rank rank `src`'s parameters and buffers (no-op in one process)."""
    if _active():
        for t in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(t.data, src)
    return module


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order (`[obj]` in one process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def shard(n: int, rank: int | None = None, world_size: int | None = None) -> slice:
    r"""The rows of a global batch of `n` rows that rank `rank` of `world_size` owns:
    contiguous, `[\lfloor rn/W\rfloor, \lfloor (r+1)n/W\rfloor)`, sizes differing by at most
    one (defaults: this process's rank and world size)."""
    r = _current_rank() if rank is None else rank
    w = _current_world() if world_size is None else world_size
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank must lie in [0, world_size), got rank {r} of {w}")
    return slice(r * n // w, (r + 1) * n // w)


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a `DistributedDataParallel` wrapper (the module itself otherwise):
    what a checkpoint stores."""
    ddp = torch.nn.parallel.DistributedDataParallel
    while isinstance(module, ddp):
        module = module.module
    return module


#: error types that another rank re-raises as such (the command line reports them in one
#: line); anything else becomes a RankError
_SHARED_ERRORS: tuple[type[Exception], ...] = (LockedError, SamplingError, ValueError, TypeError,
                                                OSError)


def agree(fn: Callable[[], tuple[R, Sequence[float]]], width: int = 0, *, what: str = ""
          ) -> tuple[R, list[float]]:
    """Run `fn()` on every rank, then make its outcome common knowledge in one all-reduce.

    `fn` returns `(result, values)` with `width` floats in `values`; they are summed over the
    ranks in the same all-reduce that tells every rank whether `fn` raised on any of them. If
    it did, every rank raises: the failing rank its own exception, the others the same type
    (for `ValueError`, `TypeError`, `OSError`, `LockedError` and `SamplingError`, else
    [`RankError`][scoresde.training.distributed.RankError]) with the failing rank's message,
    instead of waiting forever in the next collective. In one process `fn`'s exception
    simply propagates. `what` (e.g. `"at step 12"`) goes into the other ranks' message.

    **Returns:** `(result, summed values)`.
    """
    if not _active():
        result, values = fn()
        return result, [float(v) for v in values]
    error: Exception | None = None
    result = None
    payload = torch.zeros(1 + width, dtype=torch.float64)
    try:
        result, values = fn()
        if len(values) != width:
            raise RuntimeError(f"agree: expected {width} values, got {len(values)}")
        if width:
            payload[1:] = torch.tensor([float(v) for v in values], dtype=torch.float64)
    except Exception as e:  # noqa: BLE001 - every rank must learn about it
        error = e
        payload.zero_()
        payload[0] = 1.0
    summed = all_reduce_sum(payload.to(comm_device())).cpu().tolist()
    if summed[0] == 0:
        return result, summed[1:]
    me = _current_rank()
    reports = all_gather_object(
        None if error is None else (me, _shared_name(error), str(error).splitlines()[0]
                                    if str(error) else type(error).__name__))
    failed = [r for r in reports if r is not None]
    where = f" {what}" if what else ""
    if error is not None:
        others = "; ".join(f"rank {r}: {m}" for r, _, m in failed if r != me)
        if others:
            error.add_note(f"also failed{where}: {others}")
        raise error
    first_rank, name, message = failed[0]
    cls = next((c for c in _SHARED_ERRORS if c.__name__ == name), RankError)
    raise cls(f"rank {first_rank} failed{where}: {message}")


def run_on_every_rank(fn: Callable[[], R], *, what: str = "") -> R:
    """`agree` for a function without values to sum: run ``fn()`` here and make its failure
    on any rank an error on every rank. **Returns:** ``fn()``'s result."""
    return agree(lambda: (fn(), ()), 0, what=what)[0]


def _shared_name(error: Exception) -> str:
    for cls in _SHARED_ERRORS:
        if isinstance(error, cls):
            return cls.__name__
    return RankError.__name__
