"""nnUNetTrainerPLUS_lesionFocus_cpuDemo: lesion-centred patches (size rule, plans written for prediction,
batches of random crops and label-centred patches) on top of the lesion-focused recipe, built by nnU-Net from
the plugin folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from nnunet_plus.trainers.nnUNetTrainerPLUS_variants import (LESION_CENTRED_FOREGROUND_FRACTION,
                                                             LESION_CENTRED_PATCH_FRACTION, smaller_patch)

DEMO_POOLING = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]   # the demo plans: strides 4, 16, 16


def test_smaller_patch_rounds_to_the_network_stride():
    assert smaller_patch([24, 64, 64], DEMO_POOLING, LESION_CENTRED_PATCH_FRACTION) == [16, 32, 32]
    assert smaller_patch([24, 64, 64], DEMO_POOLING, (0.75, 0.75, 0.75)) == [16, 48, 48]
    assert smaller_patch([40, 160, 112], DEMO_POOLING, (0.5, 0.5, 0.5)) == [20, 80, 48]
    assert smaller_patch([8, 16, 16], DEMO_POOLING, (0.1, 0.1, 0.1)) == [4, 16, 16]   # at least one stride


def test_trainer_trains_on_lesion_centred_patches(tiny_model_env, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = get_trainer_from_args(str(tiny_model_env.dataset_id), tiny_model_env.configuration, 0,
                                    "nnUNetTrainerPLUS_lesionFocus_cpuDemo", tiny_model_env.plans,
                                    device=torch.device("cpu"))
    planned = PlansManager(str(tiny_model_env.model_folder / "plans.json")).get_configuration(
        tiny_model_env.configuration)
    expected = smaller_patch(planned.patch_size, planned.pool_op_kernel_sizes, LESION_CENTRED_PATCH_FRACTION)
    assert expected != list(planned.patch_size)
    assert list(trainer.configuration_manager.patch_size) == expected
    assert 0 < LESION_CENTRED_FOREGROUND_FRACTION < 1   # some patches are random crops that see air and body
    assert trainer.oversample_foreground_percent == LESION_CENTRED_FOREGROUND_FRACTION and trainer.initial_lr == 3e-3
    trainer.on_train_start()
    try:
        saved = json.loads((Path(trainer.output_folder_base) / "plans.json").read_text())
        assert saved["configurations"][tiny_model_env.configuration]["patch_size"] == expected
        loader = trainer.dataloader_train.data_loader
        centred = [loader.get_do_oversample(j) for j in range(loader.batch_size)]
        assert any(centred) and (loader.batch_size == 1 or not all(centred))
        batch = next(trainer.dataloader_train)
        assert list(batch["data"].shape[2:]) == expected
        losses = [trainer.train_step(next(trainer.dataloader_train))["loss"] for _ in range(2)]
        assert all(np.isfinite(v) for v in losses)
    finally:
        trainer.dataloader_train = trainer.dataloader_val = None
