"""Make a converted checkpoint appear all at once, or not at all.

A half-written output directory looks like a checkpoint to the next tool that reads it, so every
writer fills a hidden temporary directory beside the destination (same filesystem, so the final
`rename` is atomic) and only renames it into place once everything, index included, is written.
Any exception, Ctrl-C included, removes the temporary directory and leaves the destination as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bolmo.errors import CheckpointError


def check_destination(dst: Path, overwrite: bool) -> None:
    """Refuse an existing destination unless asked to replace it (checked before any work)."""
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: destination exists (pass --overwrite to replace it)")
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst}: destination exists and is not a directory")


@contextmanager
def atomic_directory(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `dst` when the block finishes without error."""
    dst = Path(dst).absolute()
    check_destination(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        _replace(tmp, dst)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise CheckpointError(f"{dst}: no space left on device while writing; nothing was written") from exc
        raise


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
