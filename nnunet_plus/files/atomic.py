"""Verified atomic file writes: a temp file beside the target, checked, then renamed onto it, so no reader
ever sees half a file and no failed write leaves a file under the final name.

The writer creates the temp file itself, the way a plain ``open()`` creates a file (mode 0666 minus the
umask; nothing here reads or changes the process umask, so it is safe in threads); a file that is replaced
keeps its mode, and a read-only file is never replaced. Before the rename the temp file is checked by its
type (:func:`nnunet_plus.files.integrity.check_complete`: gzip stream / NIfTI size, JSON, PNG, npz), because some
writers do not raise when a write fails (SimpleITK's NIfTI writer on a full disk or past a file-size limit
leaves a truncated file and returns normally).

Folders written in a hidden staging folder are swapped into place whole by :func:`replace_folder`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from nnunet_plus.files.integrity import IncompleteFileError, check_complete

logger = logging.getLogger(__name__)
#: a temp file or staging folder untouched for this long (s) belongs to a killed writer, not a running one
STALE_TEMP_S = 600


#: the hidden temp files :func:`atomic_path` writes: ``.<name>.<32 hex digits>.tmp<suffix>``
TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp(\..+)?$")


class IncompleteWriteError(OSError):
    """A write that did not produce a complete file; nothing was renamed onto the target."""


def check_replaceable(path: str | os.PathLike) -> None:
    """Raise :class:`PermissionError` (one line naming the file) when ``path`` exists but is read-only: a rename
    would replace it anyway, even for root or for a file whose folder is writable."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if not mode & 0o222:
        raise PermissionError(f"{path} is read-only (mode {stat.S_IMODE(mode):04o}) and was left unchanged; "
                              f"make it writable (chmod u+w {path}) and run again")
    if not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is not writable by this user (mode {stat.S_IMODE(mode):04o}; another "
                              f"owner, or the immutable flag: lsattr {path}) and was left unchanged")


@contextmanager
def atomic_path(path: str | os.PathLike, *, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a unique hidden temp path beside ``path`` (same suffixes, not created: the writer creates it);
    when the block succeeds the temp file is verified (:func:`~nnunet_plus.files.integrity.check_complete`, then
    ``check(tmp)`` if given, which raises :class:`~nnunet_plus.files.integrity.IncompleteFileError`) and renamed
    onto ``path`` (taking the mode of the file it replaces); otherwise it is removed and ``path`` is left as
    it was. A failed check raises :class:`IncompleteWriteError` (one line naming ``path``); a read-only
    ``path`` raises :class:`PermissionError` before anything is written."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp{suffix}"  # matches TEMP_NAME
    try:
        yield tmp
        try:
            check_complete(tmp)
            if check is not None:
                check(tmp)
        except IncompleteFileError as exc:
            kept = "the previous file was kept" if path.exists() else "no file was written under that name"
            raise IncompleteWriteError(f"writing {path} failed: the written file is incomplete ({exc.reason}; disk "
                                       f"full or over a file-size limit?); {kept}") from exc
        try:
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        except FileNotFoundError:  # nothing to replace: the temp file keeps the mode open() gave it
            pass
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def stale_temp_files(folder: str | os.PathLike, older_than_s: float) -> list[Path]:
    """Temp files of :func:`atomic_path` directly in ``folder`` (:data:`TEMP_NAME`) last modified more than
    ``older_than_s`` seconds ago: left by a killed writer (a running writer's temp file is younger)."""
    cutoff = time.time() - older_than_s
    stale = []
    for entry in os.scandir(folder):
        try:
            if TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_mtime < cutoff:
                stale.append(Path(entry.path))
        except FileNotFoundError:  # removed meanwhile (renamed by its writer, or by another part)
            pass
    return sorted(stale)


def remove_stale_temp_files(folder: str | os.PathLike, older_than_s: float = STALE_TEMP_S, *,
                            staging_of: str | None = None) -> int:
    """Remove what killed writers left in ``folder`` (nothing when it does not exist): the temp files of
    :func:`atomic_path` (:func:`stale_temp_files`) and, given ``staging_of`` (a folder name), the staging and
    set-aside folders of :func:`replace_folder` for it (``.<name>.*.tmp``, ``.<name>.old-*``) not modified for
    ``older_than_s`` seconds. Returns how many were removed; one that cannot be is logged and left."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    stale: list[Path] = list(stale_temp_files(folder, older_than_s))
    if staging_of is not None:
        for pattern in (f".{staging_of}.*.tmp", f".{staging_of}.old-*"):
            stale += [p for p in folder.glob(pattern) if p.is_dir() and not p.is_symlink()
                      and p.stat().st_mtime < cutoff]
    removed = 0
    for path in stale:
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            removed += 1
        except OSError as exc:
            logger.warning("%s: left by an interrupted run, not removed (%s)", path, exc.strerror or exc)
    if removed:
        logger.info("%s: removed %d temp file(s) / folder(s) left by an interrupted run", folder, removed)
    return removed


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented, standard JSON to ``path`` through a temp file + rename (never half-written;
    the mode of a plain ``open()``, see the module docstring); NaN / infinity raise ``ValueError``."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the finished folder ``staging`` onto ``target`` (both in the same file system), so that ``target``
    is always either the previous folder whole or the new one whole.

    An existing ``target`` (or a symlink there) is first renamed aside to a hidden ``.<name>.old-<32 hex
    digits>`` beside it; when the rename of ``staging`` then fails, the previous ``target`` is put back and the
    error raised. After a successful swap the previous folder is removed (a symlink: the link alone)."""
    staging, target = Path(staging), Path(target)
    if not (target.exists() or target.is_symlink()):
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(old, target)  # put the previous folder back
        raise
    if old.is_symlink():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)
