"""Fixtures of the classifier tests: ``cls_project`` (session) is classifier_project.py's synthetic project with
its 2-fold candidate bank; ``trained_folds`` (session) trains the tiny classifier on both folds for one epoch."""
from __future__ import annotations

import pytest
from classifier_project import CLS_SCHEMA, CLS_SPACING, ClassifierProject, make_trainer, write_project


@pytest.fixture(scope="session")
def cls_project(tmp_path_factory) -> ClassifierProject:
    """The synthetic project with its candidate bank in ``project.bank`` (see the module docstring)."""
    from nnunet_plus.classifier.bank import build_candidate_bank
    from nnunet_plus.classifier.bank_settings import BankSettings

    project = write_project(tmp_path_factory.mktemp("cls_project"))
    project.settings = BankSettings(roi_shape=(16, 32, 32), liver_shape=(16, 32, 32))
    project.bank = project.classifier / "candidate_bank"
    build_candidate_bank(project.raw, [project.model / f"fold_{k}" / "validation" for k in (0, 1)], project.bank,
                         CLS_SCHEMA, target_spacing=CLS_SPACING, settings=project.settings, num_processes=1,
                         quiet=True)
    return project


@pytest.fixture(scope="session")
def trained_folds(cls_project) -> ClassifierProject:
    """Both folds trained for one epoch (tiny preset) in ``cls_project.classifier/fold_{0,1}``."""
    summaries = {}
    for fold in (0, 1):
        summaries[fold] = make_trainer(cls_project, cls_project.classifier / f"fold_{fold}", fold).run_training()
    cls_project.summaries = summaries
    return cls_project
