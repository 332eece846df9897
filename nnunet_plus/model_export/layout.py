"""What a model zip holds: the card's names and format, the files packed per model folder and fold, the error
type of export and install, and the SHA-256 helper both use (see :mod:`nnunet_plus.model_export`)."""
from __future__ import annotations

import hashlib
from pathlib import Path

CHECKPOINT = "checkpoint_final.pth"
CARD_JSON = "model_card.json"
CARD_MARKDOWN = "MODEL_CARD.md"
CARD_FORMAT = "nnunet_plus.model_card"
#: files of the nnU-Net model folder, and of each of its folds, that are packed when present
NNUNET_FILES = ("dataset.json", "plans.json", "dataset_fingerprint.json")
NNUNET_FOLD_FILES = (CHECKPOINT, "progress.png", "validation/plus_summary.json", "validation/summary.json")
#: the same for the PLUS classifier folder
CLASSIFIER_FILES = ("operating_point.json", "candidate_bank/bank.json")
CLASSIFIER_FOLD_FILES = (CHECKPOINT, "operating_point.json", "validation/summary.json")
#: bytes read at a time when hashing or extracting
CHUNK = 1 << 20


class ExportError(RuntimeError):
    """A model that cannot be packed or a zip that cannot be installed; the message is one line saying why and
    what to do."""


def fold_name(fold: int | str) -> str:
    """``fold_<fold>``: the folder of a fold inside a model folder."""
    return f"fold_{fold}"


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
