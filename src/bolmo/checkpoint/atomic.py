"""Make a converted checkpoint appear all at once, or not at all.

A half-written output directory looks like a checkpoint to the next tool that reads it, so every
writer fills a hidden temporary directory beside the destination (same filesystem, so the final
`rename` is atomic) and only renames it into place once everything, index included, is written.
Any exception, Ctrl-C and SIGTERM included (the CLI raises SIGTERM as an exception), removes the
temporary directory and leaves the destination as it was. A run killed outright (SIGKILL, power
loss) cannot clean up: the next run writing the same destination removes its temporary directory
instead, and if it died in the middle of an --overwrite swap, puts the previous destination back.

The final rename never replaces what the run did not decide to replace: a destination that appeared
while the run was writing is left alone, and --overwrite replaces only a directory that looks like
a checkpoint or an output of bolmo (or an empty one) unless it is given twice.
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

from bolmo.checkpoint.interrupts import signals_held
from bolmo.errors import CheckpointError, warn

_SWEEP_AFTER_S = 60  # a younger temporary directory may belong to a run that has not locked it yet


# Any of these makes a directory look like a checkpoint or an output of bolmo (safe to replace).
_CHECKPOINT_MARKERS = ("config.json", ".metadata", ".metadata.json", "model_and_optim", "model.safetensors",
                       "model.safetensors.index.json", "latest")


def looks_replaceable(path: Path) -> bool:
    """An empty directory, or one with a checkpoint's files: what --overwrite may replace when given once."""
    return not any(path.iterdir()) or any((path / name).exists() for name in _CHECKPOINT_MARKERS)


def check_destination(dst: str | Path, overwrite: bool | int, sources: Iterable[str | Path] = ()) -> Path:
    """Refuse, before any work, a destination that is, contains or lies inside one of the `sources`
    being read (replacing it would move or delete them), an existing one unless asked to replace
    it, and one that does not look like a checkpoint unless asked twice (`overwrite` >= 2).
    Returns the destination with symlinks and `..` resolved."""
    if isinstance(dst, str) and not dst.strip():  # Path("") is the current directory: never meant
        raise CheckpointError("the destination is an empty path; name the directory to create")
    dst = _resolve(dst)
    resolved_sources = [_resolve(p) for p in sources]
    _restore_swapped(dst)  # a run killed mid-swap: the destination as it was comes back first
    for src in resolved_sources:
        if dst == src or dst in src.parents or src in dst.parents:
            relation = "is" if dst == src else "contains" if dst in src.parents else "is inside"
            raise CheckpointError(f"{dst}: the destination {relation} the source {src}; nothing was written")
    exists = _exists(dst)
    if exists and not overwrite:
        raise CheckpointError(f"{dst}: destination exists (pass --overwrite to replace it)")
    if exists and not dst.is_dir():
        raise CheckpointError(f"{dst}: destination exists and is not a directory")
    if exists and overwrite < 2 and not looks_replaceable(dst):
        raise CheckpointError(f"{dst}: destination exists and does not look like a checkpoint (no config.json, "
                              "weights or DCP metadata); pass --overwrite twice to replace it anyway")
    return dst


def _exists(dst: Path) -> bool:
    """Whether `dst` exists; a path that cannot even be checked (a parent that is a file, a parent
    without search permission) is refused here, naming the cause, not later by a traceback."""
    try:
        dst.stat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            blocker = next((p for p in dst.parents if p.exists() and not p.is_dir()), dst.parent)
            raise CheckpointError(f"{dst}: cannot create the destination: {blocker} is not a directory") from None
        raise CheckpointError(f"{dst}: cannot create the destination ({exc.strerror or exc})") from None
    return True


def _resolve(path: str | Path) -> Path:
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise CheckpointError(f"{path}: cannot resolve the path ({exc})") from None


@contextmanager
def atomic_directory(dst: str | Path, overwrite: bool | int = False,
                     sources: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory that becomes `dst` when the block finishes without error."""
    dst = check_destination(dst, overwrite, sources)
    before = _identity(dst)  # what --overwrite agreed to replace (None: nothing was there)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{dst.name}.tmp-{socket.gethostname()}-"  # only this host's leftovers are ever swept
        _sweep_dead(dst.parent, prefix)
        tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=dst.parent))
    except OSError as exc:  # read-only or missing parent, no permission
        raise CheckpointError(f"{dst}: cannot create the destination ({exc.strerror or exc})") from None
    lock = os.open(tmp, os.O_RDONLY)
    try:
        _try_lock(lock)  # held until this process ends, however it ends
        yield tmp
        _replace(tmp, dst, before, overwrite)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise CheckpointError(f"{dst}: no space left on device while writing; nothing was written") from exc
        raise
    finally:
        os.close(lock)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _try_lock(fd: int) -> bool:
    """flock `fd`; False if another process holds it or the filesystem cannot lock (then nothing is swept)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _pid_of(name: str, prefix: str) -> int | None:
    """The pid a temporary name records after `prefix` ("<pid>-<random>"), if any."""
    head = name[len(prefix):].partition("-")[0]
    return int(head) if head.isdigit() else None


def _alive(pid: int | None) -> bool | None:
    """Whether process `pid` of this host runs (None: unknown)."""
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _sweep_dead(parent: Path, prefix: str) -> None:
    """Remove temporary directories of killed runs: one whose recorded process is gone, or an
    unlocked one older than a minute (the kernel drops a run's lock when it dies; a younger
    unlocked one may belong to a run between creating and locking it)."""
    for old in parent.glob(glob.escape(prefix) + "*"):
        try:
            if old.is_symlink() or not old.is_dir():
                continue
            alive = _alive(_pid_of(old.name, prefix))
            if alive or (alive is None and time.time() - old.stat().st_mtime < _SWEEP_AFTER_S):
                continue
            fd = os.open(old, os.O_RDONLY)
        except FileNotFoundError:  # another run swept it first
            continue
        try:
            if _try_lock(fd):
                shutil.rmtree(old, ignore_errors=True)
        finally:
            os.close(fd)


def _aside_name(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _restore_swapped(dst: Path) -> None:
    """Finish what a run killed during an --overwrite swap left: the previous destination moved
    aside (`.NAME.old-*`, locked by its run while it lives). If the destination is missing, the run
    died between the two renames: put the previous one back. Otherwise it is garbage: remove it."""
    if not dst.parent.is_dir():
        return
    for old in dst.parent.glob(glob.escape(f".{dst.name}.old-") + "*"):
        if old.is_symlink() or not old.is_dir() or _alive(_pid_of(old.name, f".{dst.name}.old-")):
            continue
        try:
            fd = os.open(old, os.O_RDONLY)
        except FileNotFoundError:  # another run restored or removed it first
            continue
        try:
            if not _try_lock(fd):
                continue
            if dst.exists() or dst.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.rename(dst)
        finally:
            os.close(fd)


def _replace(tmp: Path, dst: Path, before: tuple[int, int] | None, overwrite: bool | int) -> None:
    """Move `tmp` to `dst`. An existing `dst` is replaced only if it is the one checked before the
    run (a directory that appeared meanwhile is someone else's); it is moved aside first and
    deleted only afterwards. The renames run with Ctrl-C and SIGTERM held, so neither can leave
    the destination missing."""
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700; a checkpoint directory should be readable by others
    appeared = f"{dst}: appeared while this run was writing; left as it is, nothing was written"
    with signals_held():
        now = _identity(dst)
        if now is None:
            try:
                tmp.rename(dst)  # onto a non-empty directory created since the check: fails, replaces nothing
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise CheckpointError(appeared) from None
                raise
            return
        if now != before or not overwrite:
            raise CheckpointError(appeared)
        old = _aside_name(dst)
        held = os.open(dst, os.O_RDONLY)  # the lock moves with the directory: a sweeper leaves it alone
        try:
            _try_lock(held)
            dst.rename(old)
            try:
                tmp.rename(dst)
            except BaseException:
                old.rename(dst)
                raise
        except BaseException:
            os.close(held)
            raise
    try:
        shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(held)
    if old.exists():  # an undeletable file in it (immutable, another owner's): the new output is in place
        warn(f"{dst}: replaced, but the previous contents could not all be deleted; they are in {old}")
