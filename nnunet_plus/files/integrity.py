"""Is a file complete? Structural checks by file type, for the files users give and the files we write.

=============  ============================================================================================
``.gz``        the whole gzip stream decompresses and ends with its end-of-stream marker, CRC-32 and length
               (SimpleITK reads a truncated ``.nii.gz`` as an image whose missing part is zeros)
NIfTI          ``.nii`` / ``.nii.gz``: the (decompressed) file covers header + voxel data,
               ``vox_offset + prod(dim) * bitpix / 8`` bytes (NIfTI-1 and NIfTI-2 single-file headers)
``.json``      parses as JSON
``.png``       the PNG signature first, the IEND chunk last
``.npz``       a zip whose members all match their CRC-32 (what ``np.load(allow_pickle=False)`` reads)
=============  ============================================================================================

Other files only have to exist. A failure is an :class:`IncompleteFileError` (a ValueError) whose ``reason``
says what is wrong, in words a user can act on.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

_CHUNK = 1 << 20
_NIFTI1_HEADER, _NIFTI2_HEADER = 348, 540
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class IncompleteFileError(ValueError):
    """``path`` is truncated or corrupt; ``reason`` says how (one line)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is truncated or corrupt ({reason}); re-export it or copy it again")


def check_complete(path: str | os.PathLike) -> None:
    """Raise :class:`IncompleteFileError` when ``path`` is missing, or truncated / corrupt by the checks of the
    table above (chosen by its suffix; ``.gz`` files are read to the end once)."""
    path = Path(path)
    if not path.is_file():
        raise IncompleteFileError(path, "the file does not exist")
    name = path.name.lower()
    if name.endswith(".gz"):
        head, size = _gunzip(path)
        if name.endswith(".nii.gz"):
            _check_nifti(path, head, size)
    elif name.endswith(".nii"):
        with open(path, "rb") as fh:
            head = fh.read(_NIFTI2_HEADER)
        _check_nifti(path, head, path.stat().st_size)
    elif name.endswith(".json"):
        try:
            json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IncompleteFileError(path, f"not valid JSON: {exc}") from exc
    elif name.endswith(".png"):
        _check_png(path)
    elif name.endswith(".npz"):
        _check_zip(path)


def _gunzip(path: Path) -> tuple[bytes, int]:
    """The first bytes (up to a NIfTI-2 header) of the decompressed data and its length in bytes."""
    if path.stat().st_size == 0:
        raise IncompleteFileError(path, "the file is empty (0 bytes)")
    head, size = b"", 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                if len(head) < _NIFTI2_HEADER:
                    head += chunk[: _NIFTI2_HEADER - len(head)]
                size += len(chunk)
    except EOFError as exc:
        raise IncompleteFileError(path, "the gzip stream ends before its end marker") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise IncompleteFileError(path, f"damaged gzip data: {exc}") from exc
    return head, size


def nifti_data_end(header: bytes) -> int | None:
    """Bytes a single-file NIfTI-1 / NIfTI-2 image needs (``vox_offset`` + voxel data) by its ``header``
    (the file's first 540 bytes, decompressed); None when ``header`` is not such a header."""
    for order in "<>":
        if len(header) >= _NIFTI1_HEADER and struct.unpack(order + "i", header[:4])[0] == _NIFTI1_HEADER:
            if header[344:348] != b"n+1\x00":
                return None
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
            break
        if len(header) >= _NIFTI2_HEADER and struct.unpack(order + "i", header[:4])[0] == _NIFTI2_HEADER:
            if header[4:8] != b"n+2\x00":
                return None
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    extents = dims[1: dims[0] + 1]
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or not math.isfinite(offset) or offset < 0 or min(extents) < 0:
        return None  # a broken header: SimpleITK's reader says what is wrong
    return int(offset) + (math.prod(extents) * bitpix + 7) // 8


def _check_nifti(path: Path, header: bytes, size: int) -> None:
    needed = nifti_data_end(header)
    if needed is not None and size < needed:
        raise IncompleteFileError(path, f"it holds {size} of the {needed} bytes its NIfTI header announces")


def _check_png(path: Path) -> None:
    with open(path, "rb") as fh:
        start = fh.read(len(_PNG_SIGNATURE))
        fh.seek(max(0, path.stat().st_size - len(_PNG_END)))
        end = fh.read()
    if start != _PNG_SIGNATURE:
        raise IncompleteFileError(path, "no PNG signature")
    if end != _PNG_END:
        raise IncompleteFileError(path, "the PNG ends before its IEND chunk")


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise IncompleteFileError(path, f"not a complete zip / npz archive: {exc}") from exc
    if bad is not None:
        raise IncompleteFileError(path, f"member {bad} fails its CRC check")
