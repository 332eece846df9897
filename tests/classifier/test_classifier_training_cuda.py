"""Classifier training with mixed precision on CUDA (skipped without a GPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_plus.case_analysis import analyse_case
from nnunet_plus.classifier.checkpoint import load_checkpoint
from nnunet_plus.classifier.inference import PLUSInference

from classifier_project import synthetic_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_amp_training_and_inference_on_cuda(cls_project, tmp_path):
    from nnunet_plus.classifier.trainer.fold_trainer import PLUSClassifierTrainer
    from nnunet_plus.classifier.trainer.settings import TrainerSettings

    fold = tmp_path / "fold_0"
    trainer = PLUSClassifierTrainer(cls_project.bank, fold, fold=0, train_cases=cls_project.splits[0]["train"],
                                    val_cases=cls_project.splits[0]["val"], raw_dataset_dir=cls_project.raw,
                                    dataset_name=cls_project.dataset,
                                    settings=TrainerSettings(epochs=2, preset="tiny"), device="cuda", quiet=True)
    summary = trainer.run_training()
    assert trainer.amp and trainer.scaler.is_enabled()
    assert next(trainer.model.parameters()).is_cuda
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["scaler"]["scale"] > 0 and "cuda" in ckpt["rng"]
    assert all(np.isfinite(h["train_total"]) for h in ckpt["history"])
    assert summary["nnunet+plus"]["meta"]["n_cases"] == 3

    inference = PLUSInference.from_folder(tmp_path, folds=[0], schema=cls_project.schema, device="cuda")
    image, _, probabilities = synthetic_case("full")
    analysis = analyse_case(probabilities, cls_project.schema, image=image, spacing=cls_project.spacing)
    on_gpu = inference.predict_case(image, probabilities, analysis, spacing=cls_project.spacing)
    on_cpu = PLUSInference.from_folder(tmp_path, folds=[0], schema=cls_project.schema).predict_case(
        image, probabilities, analysis, spacing=cls_project.spacing)
    np.testing.assert_allclose(on_gpu.lesion_probabilities, on_cpu.lesion_probabilities, atol=2e-2)  # float16
