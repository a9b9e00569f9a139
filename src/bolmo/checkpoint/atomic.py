"""Make a converted checkpoint appear all at once, or not at all.

A half-written output directory looks like a checkpoint to the next tool that reads it, so every
writer fills a hidden temporary directory beside the destination (same filesystem, so the final
`rename` is atomic) and only renames it into place once everything, index included, is written.
Any exception, Ctrl-C included, removes the temporary directory and leaves the destination as it was.
A run killed outright (SIGKILL, power loss) cannot clean up: the next run writing the same
destination removes its temporary directory instead.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bolmo.errors import CheckpointError

_SWEEP_AFTER_S = 60  # a younger temporary directory may belong to a run that has not locked it yet


def check_destination(dst: str | Path, overwrite: bool, sources: Iterable[str | Path] = ()) -> Path:
    """Refuse, before any work, a destination that is, contains or lies inside one of the `sources`
    being read (replacing it would move or delete them), and an existing one unless asked to replace
    it. Returns the destination with symlinks and `..` resolved."""
    dst = Path(dst).resolve()
    for src in (Path(p).resolve() for p in sources):
        if dst == src or dst in src.parents or src in dst.parents:
            relation = "is" if dst == src else "contains" if dst in src.parents else "is inside"
            raise CheckpointError(f"{dst}: the destination {relation} the source {src}; nothing was written")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: destination exists (pass --overwrite to replace it)")
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst}: destination exists and is not a directory")
    return dst


@contextmanager
def atomic_directory(dst: str | Path, overwrite: bool = False,
                     sources: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory that becomes `dst` when the block finishes without error."""
    dst = check_destination(dst, overwrite, sources)
    dst.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{dst.name}.tmp-{socket.gethostname()}-"  # only this host's leftovers are ever swept
    _sweep_dead(dst.parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dst.parent))
    lock = os.open(tmp, os.O_RDONLY)
    try:
        _try_lock(lock)  # held until this process ends, however it ends
        yield tmp
        _replace(tmp, dst)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise CheckpointError(f"{dst}: no space left on device while writing; nothing was written") from exc
        raise
    finally:
        os.close(lock)


def _try_lock(fd: int) -> bool:
    """flock `fd`; False if another process holds it or the filesystem cannot lock (then nothing is swept)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _sweep_dead(parent: Path, prefix: str) -> None:
    """Remove temporary directories of killed runs: the kernel drops a run's lock when it dies, so an
    unlocked one older than a minute belongs to no live run."""
    for old in parent.glob(glob.escape(prefix) + "*"):
        try:
            if old.is_symlink() or not old.is_dir() or time.time() - old.stat().st_mtime < _SWEEP_AFTER_S:
                continue
            fd = os.open(old, os.O_RDONLY)
        except FileNotFoundError:  # another run swept it first
            continue
        try:
            if _try_lock(fd):
                shutil.rmtree(old, ignore_errors=True)
        finally:
            os.close(fd)


def _replace(tmp: Path, dst: Path) -> None:
    """Move `tmp` to `dst`; an existing `dst` is moved aside first and deleted only afterwards."""
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700; a checkpoint directory should be readable by others
    if not dst.exists():
        tmp.rename(dst)
        return
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    dst.rename(old)
    try:
        tmp.rename(dst)
    except BaseException:
        old.rename(dst)
        raise
    shutil.rmtree(old, ignore_errors=True)
