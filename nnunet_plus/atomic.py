"""Atomic file writes: a temp file beside the target, renamed onto it, so no reader ever sees half a file.

The writer creates the temp file itself, the way a plain ``open()`` creates a file (mode 0666 minus the
umask; nothing here reads or changes the process umask, so it is safe in threads); a file that is replaced
keeps its mode, and a read-only file is never replaced.
"""
from __future__ import annotations

import os
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def check_replaceable(path: str | os.PathLike) -> None:
    """Raise :class:`PermissionError` (one line naming the file) when ``path`` exists but is read-only: a rename
    would replace it anyway, even for root or for a file whose folder is writable."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if not mode & 0o222 or not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is read-only (mode {stat.S_IMODE(mode):04o}) and was left unchanged; "
                              f"make it writable (chmod u+w {path}) and run again")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique hidden temp path beside ``path`` (same suffixes, not created: the writer creates it);
    renamed onto ``path`` if the block succeeds (taking the mode of the file it replaces), removed otherwise.
    A read-only ``path`` raises :class:`PermissionError` before anything is written."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp{suffix}"
    try:
        yield tmp
        try:
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        except FileNotFoundError:  # nothing to replace: the temp file keeps the mode open() gave it
            pass
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
