"""Checkpoints: state dicts and plain metadata only, written atomically, loaded with
`torch.load(weights_only=True)`.

A checkpoint is a dict `{"format": "scoresde-checkpoint", "version": 1, "step": int,
"model": state_dict, "ema": state_dict | None, "optimizer": state_dict | None,
"generator": ByteTensor | None, "losses": list[float], "meta": dict}`, where `meta` holds
`sde` ([`SDE.config`][scoresde.sdes.SDE.config]), `prediction`, `net` (the network's `config()`) and
`net_class` (a name in the network registry, [`NETS`][scoresde.nets.registry.NETS]), so
[`load_model`][scoresde.training.checkpoint.load_model] can rebuild the model without pickled
code; for a network that is not registered, `load_model(path, net=...)` takes the module.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import default_mode
from ..models import ScoreModel
from ..nets.registry import net_from_config
from ..sdes import sde_from_config

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "FORMAT"]

FORMAT = "scoresde-checkpoint"
VERSION = 1


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `obj` to `path` atomically: a temporary file `<name>.<random>.tmp` in the same
    folder, flushed and fsynced, given the umask's permissions, then renamed over `path` (so
    a crash never leaves a half-written file, and the previous checkpoint stays intact until
    the new one is complete).

    **Raises:** `OSError` with a plain message when the file cannot be written (a full disk
    says so, with the free space), instead of PyTorch's internal serializer error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": FORMAT, "version": VERSION, **obj}, f)
                f.flush()
                os.fsync(f.fileno())
        except (RuntimeError, OSError) as e:
            raise _write_error(path, e) from None
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _write_error(path: Path, e: BaseException) -> OSError:
    free = shutil.disk_usage(path.parent).free
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "write failed" in first or free < 1 << 20:
        return OSError(errno.ENOSPC, f"no space left to write checkpoint {str(path)!r} "
                       f"({free} bytes free on its file system); the previous checkpoint, if "
                       f"any, is intact ({first})")
    return OSError(getattr(e, "errno", None) or errno.EIO,
                   f"could not write checkpoint {str(path)!r}: {first}")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; a clear error if `path` does not exist
    or is not a scoresde checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated or empty files, foreign formats
        first = (str(e).splitlines() or ["(no message)"])[0][:200]
        raise ValueError(f"{str(path)!r} is not a readable scoresde checkpoint "
                         f"({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a scoresde checkpoint (no format={FORMAT!r} key)")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint version {ckpt.get('version')}, "
                         f"this scoresde reads version {VERSION}")
    return ckpt


def load_model(path: str | os.PathLike, *, net: nn.Module | None = None, ema: bool = True,
               device: str | torch.device = "cpu") -> ScoreModel:
    """Rebuild the [`ScoreModel`][scoresde.models.ScoreModel] stored in a checkpoint (EMA
    weights by default).

    The network is rebuilt from the checkpoint's `net_class` and `net` config through the
    registry ([`register_net`][scoresde.nets.registry.register_net]); for an unregistered
    network pass a freshly constructed module of the same architecture as `net`, and the
    stored weights are loaded into it. The SDE is rebuilt through its registry
    ([`register_sde`][scoresde.sdes.register_sde]).
    """
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta")
    missing = ([k for k in ("sde", "prediction") if k not in meta]
               if isinstance(meta, dict) else ["meta"])
    if missing or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"checkpoint {str(path)!r} lacks {missing or ['model']}: it was not "
                         "written by scoresde's Trainer (or was edited)")
    if net is None:
        name = meta.get("net_class")
        if "net" not in meta or meta["net"] is None:
            raise ValueError(f"checkpoint {str(path)!r} stores no network config (net_class="
                             f"{name!r}); pass the network as load_model(path, net=...)")
        try:
            net = net_from_config(name, meta["net"])
        except ValueError as e:
            raise ValueError(f"checkpoint {str(path)!r}: {e}") from None
    elif not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module (a fresh network of the stored architecture), "
                        f"got {type(net).__name__}")
    which = "ema" if ema and ckpt.get("ema") is not None else "model"
    state = ckpt[which]
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"checkpoint {str(path)!r}: the {which} weights hold NaN/Inf in "
                         f"{bad[:3]}{' ...' if len(bad) > 3 else ''}; it cannot give finite samples")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise ValueError(f"checkpoint {str(path)!r} does not fit the network "
                         f"{type(net).__name__}: {first} {detail}".strip()) from None
    model = ScoreModel(net, sde_from_config(meta["sde"]), prediction=meta["prediction"])
    return model.to(device).eval()
