"""Loading nnU-Net's pickled files without running code from them.

nnU-Net writes ``<case>.pkl`` (image properties) with ``pickle`` and its checkpoints with ``torch.save``;
unpickling a crafted file runs any code its author chose.

* :func:`load_properties` reads a ``.pkl`` with an unpickler that builds plain data only (dict, list, tuple,
  str, bytes, numbers, bool, None, ``OrderedDict``) and numpy arrays / scalars: a file that asks for any other
  callable or class is refused before anything is called (a one-line error naming the file and the
  ``--trust-pickle`` flag). nnU-Net's properties (``sitk_stuff``, ``spacing``, cropping boxes, class
  locations) are plain data and load this way. ``trust_pickle=True`` uses ``pickle.load``, with a warning.
* :func:`load_softmax` reads nnU-Net's ``<case>.npz`` (key ``probabilities``) with ``allow_pickle=False``: the one
  reader of exported probabilities.
* :func:`check_checkpoint` opens a torch checkpoint with ``weights_only=True`` (tensors, plain data, numpy
  scalars). nnU-Net's predictor then loads it again with ``weights_only=False`` (nnU-Net's code, which we do not
  change): a checkpoint the safe loader refuses is loaded anyway, after a warning naming it.
"""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
#: (module, name) a ``.pkl`` may refer to: numpy's array / scalar / dtype reconstruction (no other code runs)
_PROPERTY_GLOBALS = {
    (module, name): obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("_reconstruct", np.ndarray.__reduce__(np.zeros(0))[0]),
                      ("scalar", _NUMPY_SCALAR))
} | {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
     ("collections", "OrderedDict"): OrderedDict}


class UnsafePickleError(ValueError):
    """A pickle that would call code other than plain-data / numpy reconstruction."""


class _PropertiesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _PROPERTY_GLOBALS[(module, name)]
        except KeyError:
            if module.startswith("numpy.dtypes") and name.endswith("DType"):  # numpy >= 2 dtype classes
                return getattr(np.dtypes, name)
            raise UnsafePickleError(f"{module}.{name}") from None


def load_properties(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict:
    """nnU-Net's ``<case>.pkl`` properties dict, built from plain data only (see the module docstring);
    ``ValueError`` naming the file when it is unreadable, not a dict, or asks for other code (then it says
    that ``--trust-pickle`` would load it)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if trust_pickle:
                logger.warning("unpickling %s with pickle.load (--trust-pickle): this runs any code the file "
                               "holds; use it only for files you produced", path)
                properties = pickle.load(fh)
            else:
                properties = _PropertiesUnpickler(fh).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path} is not plain data: unpickling it would call {exc}, which nnunet_plus "
                                "does not do by default; if you produced this file, pass --trust-pickle") from exc
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path} cannot be read as nnU-Net properties (truncated or corrupt pickle: "
                         f"{type(exc).__name__}: {exc}); export it again") from exc
    if not isinstance(properties, dict):
        raise ValueError(f"{path} holds a {type(properties).__name__}, not nnU-Net's properties dict")
    return properties


def check_checkpoint(path: str | os.PathLike) -> None:
    """Open a torch checkpoint with ``weights_only=True`` (numpy scalars allowed, as nnU-Net's logs hold them);
    log a warning naming it when the safe loader refuses it (it holds other objects), ``ValueError`` naming it
    when it is corrupt or truncated."""
    import torch

    path = Path(path)
    numpy_scalars = [_NUMPY_SCALAR, np.dtype, *(getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType"))]
    try:
        with torch.serialization.safe_globals(numpy_scalars):
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated: {exc}); copy it again "
                             "or retrain the fold") from exc
        detail = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line),
                      "objects other than tensors and plain data")
        logger.warning("%s is refused by torch's safe loader (weights_only=True: %s); nnU-Net loads it with "
                       "weights_only=False, which runs code held in the file: use only checkpoints you trust",
                       path, detail)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated: {type(exc).__name__}: "
                         f"{reason}); copy it again or retrain the fold") from exc



def load_softmax(npz_file: str | os.PathLike) -> np.ndarray:
    """nnU-Net's exported probabilities ``(C, Z, Y, X)`` of ``<case>.npz`` (``--save_probabilities`` / ``--npz``),
    read without pickle; ValueError naming the file when it is corrupt, has no 4-D finite ``probabilities``."""
    npz_file = Path(npz_file)
    try:
        with np.load(npz_file, allow_pickle=False) as data:
            keys = data.files
            probabilities = data["probabilities"] if "probabilities" in keys else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:  # ValueError: a pickled / object array
        raise ValueError(f"{npz_file} cannot be read as nnU-Net probabilities (truncated or corrupt file: "
                         f"{error}); export it again") from None
    if probabilities is None:
        raise ValueError(f"{npz_file} has no 'probabilities' array (keys {keys}); it is not an nnU-Net softmax export")
    if probabilities.ndim != 4:
        raise ValueError(f"{npz_file}: 'probabilities' must be (C, Z, Y, X), got shape {probabilities.shape}")
    if not np.isfinite(probabilities).all():
        raise ValueError(f"{npz_file} holds NaN or infinite probabilities; export it again")
    return probabilities
