"""Share a trained model as one zip: pack it (``nnunet_plus_export_model``), unpack it (``nnunet_plus_install_model``).

The zip holds, with paths relative to ``$nnUNet_results`` (like nnU-Net's ``nnUNetv2_export_model_to_zip``):

* the nnU-Net model folder ``DatasetXXX_Name/<trainer>__<plans>__<configuration>``: ``dataset.json`` (with the
  ``"plus"`` schema), ``plans.json``, ``dataset_fingerprint.json``, and per fold ``checkpoint_final.pth``,
  ``progress.png``, ``validation/plus_summary.json`` and ``validation/summary.json`` (those present); never
  ``checkpoint_latest`` / ``checkpoint_best`` nor the validation softmax exports;
* the PLUS classifier folder ``DatasetXXX_Name/PLUSClassifier__<trainer>__<plans>__<configuration>`` when it
  exists: per fold ``checkpoint_final.pth``, ``operating_point.json``, ``validation/summary.json``, the pooled
  ``operating_point.json`` (what ``nnunet_plus_predict`` applies) and ``candidate_bank/bank.json`` (the bank's
  settings and cases; not its ``<case>.npz`` crops);
* a model card in the nnU-Net model folder: ``model_card.json`` (:data:`CARD_FORMAT`; dataset, labels, schema,
  training cohort, folds, validation figures, operating point, software versions, intended use, and the
  SHA-256 of every other file of the zip) and ``MODEL_CARD.md`` (the same, for people).

Installing checks the zip before it writes anything: every member must be a regular file with a relative name
inside one of the card's model folders (no absolute path, no ``..``, no symlink), listed in the card with its
hash; a model folder already installed with other content is replaced only with ``force``. The files are
written into a hidden temporary folder inside ``$nnUNet_results/DatasetXXX_Name`` and each model folder is
renamed into place whole, so an interrupted install leaves no half-written model folder.
"""
from __future__ import annotations

from nnunet_plus.model_export.card import INTENDED_USE, SYNTHETIC_NOTE, model_card, model_card_markdown
from nnunet_plus.model_export.cli import export_main, install_main
from nnunet_plus.model_export.export import export_model
from nnunet_plus.model_export.install import InstallResult, install_model
from nnunet_plus.model_export.layout import CARD_FORMAT, CARD_JSON, CARD_MARKDOWN, ExportError

__all__ = ["CARD_FORMAT", "CARD_JSON", "CARD_MARKDOWN", "INTENDED_USE", "SYNTHETIC_NOTE", "ExportError",
           "InstallResult", "export_model", "export_main", "install_main", "install_model", "model_card",
           "model_card_markdown"]
