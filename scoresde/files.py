"""Files a run writes, and the guarantees around them: result folders replaced atomically
(a run's files appear together when it ends, never mixed with an earlier run's), a lock per
run folder (two trainers never share one; a lock left by a killed process is detected and
taken over), permissions that follow the umask, and orphaned temporary files cleaned up.

Nothing a previous run wrote is destroyed before the new run has succeeded: an atomic folder
is built under a temporary name beside its destination and renamed into place at the end;
an interrupted or failed run leaves its partial folder under a clearly marked name instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["RunLock", "LockedError", "atomic_folder", "check_output_folder", "default_mode",
           "remove_orphans", "write_atomic", "write_text_atomic"]


def default_mode(folder: bool = False) -> int:
    """The mode a new file (`0o666 & ~umask`) or folder (`0o777 & ~umask`) gets under the
    process's umask; `tempfile` creates them private (0600/0700), which a result must not
    keep."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], *,
                 keep_suffix: bool = True) -> Path:
    """Call ``write(tmp)`` on a temporary file beside `path`, then rename it over `path`: a
    reader sees the old file or the new one, never a partial one, and a failed `write`
    leaves the old file and no temporary behind. With `keep_suffix` the temporary has
    `path`'s suffix (writers that pick the format from the name still do) and the folder
    is created; otherwise it is ``<name>.<random>.tmp`` in an existing folder."""
    path = Path(path)
    if keep_suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = (f".{path.stem}.", path.suffix) if keep_suffix else (path.name + ".", ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text), keep_suffix=False)


def check_output_folder(path: str | os.PathLike, overwrite: bool, what: str = "output folder"
                        ) -> Path:
    """`path` as a `Path` after checking that a run may write there: not a file, and, unless
    `overwrite`, absent or empty (`ValueError` otherwise, naming the option)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {str(p)!r} exists and is not a folder")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise ValueError(f"{what} {str(p)!r} is not empty; choose another folder or pass "
                         "overwrite=True (--overwrite on the command line) to replace it "
                         "when the new run has finished")
    return p


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a result folder under a temporary name, then move it to `path` in one rename.

    Yields the temporary folder (beside `path`, so the final rename stays on one file
    system). On success an existing `path` (allowed only with `overwrite`) is replaced: it is
    renamed aside, the new folder renamed into place, then the old one deleted. On an
    exception or Ctrl-C the partial folder is kept as `<path>.interrupted-<time>` (the
    exception gets a note saying so) and `path` is left untouched.
    """
    dest = check_output_folder(path, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".running", dir=dest.parent))
    os.chmod(tmp, default_mode(folder=True))
    try:
        yield tmp
    except BaseException as e:
        kept = dest.with_name(f"{dest.name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while kept.exists():
            kept, n = kept.with_name(f"{kept.name.split('~')[0]}~{n}"), n + 1
        if any(tmp.iterdir()):
            os.replace(tmp, kept)
            e.add_note(f"partial results kept in {kept}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        check_output_folder(dest, overwrite)      # it may have been filled meanwhile
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


class LockedError(RuntimeError):
    """A run folder is locked by another live process."""


class RunLock:
    """An exclusive lock on a run folder: the file `<folder>/.lock`, created atomically
    (`O_CREAT | O_EXCL`) and holding the owner's host, pid and start time.

    A lock whose owner is on this host and no longer alive is stale (a killed run) and is
    taken over; a live owner makes `acquire` raise `LockedError` naming it. Use as a
    context manager or call `acquire`/`release`.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError, OSError):
            return None

    @staticmethod
    def _alive(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return True                              # cannot tell: assume it is alive
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError, TypeError):
            return True
        return True

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner.get("pid") == os.getpid() and \
                        owner.get("host") == me["host"]:
                    raise LockedError(f"run folder {str(self.folder)!r} is already locked by this "
                                      "process (another Trainer writing to it)") from None
                if owner is None or not self._alive(owner):
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()            # stale: its owner was killed
                    continue
                raise LockedError(
                    f"run folder {str(self.folder)!r} is in use by pid {owner.get('pid')} on "
                    f"{owner.get('host')} (since {owner.get('started')}); wait for it, use "
                    f"another folder, or delete {str(self.path)!r} if that run is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise LockedError(f"could not lock {str(self.folder)!r}: the lock file keeps changing")

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_orphans(folder: str | os.PathLike, pattern: str = "*.tmp") -> list[Path]:
    """Delete temporary files matching `pattern` left in `folder` by a killed writer (call
    with the folder's lock held). **Returns:** the paths removed."""
    removed = []
    for p in Path(folder).glob(pattern):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed
