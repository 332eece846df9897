"""The error types of ``nnunet_plus_predict``: one-line messages that name the offending file or folder.

Both are ``ValueError`` subclasses, so that the CLI reports them as one line (``nnunet_plus_predict: error:``)
and a case that raises one fails alone (:mod:`nnunet_plus.predict.runner`). They live here, below the modules
that raise them (inputs, DICOM series reading, outputs, DICOM writing), so that those import each other one way.
"""
from __future__ import annotations


class InputError(ValueError):
    """A problem with an input case or folder; the message names the offending file."""


class DicomOutputError(ValueError):
    """The DICOM outputs of a case cannot be made (source series missing, not matching the grid, ...)."""
