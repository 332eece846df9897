"""LesionUnionLoss (nnUNetTrainerPLUS_lesionFocus) against a hand computation in numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_plus.trainers.nnUNetTrainerPLUS_lesionFocus import LesionUnionLoss


class ZeroLoss(torch.nn.Module):
    def forward(self, logits, target):
        return logits.sum() * 0


def _by_hand(logits: np.ndarray, target: np.ndarray, lesion_channels: list[int]) -> tuple[float, float]:
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p_lesion = p[:, lesion_channels].sum(1)
    truth = np.isin(target[:, 0], lesion_channels).astype(float)
    bce = -np.mean(truth * np.log(p_lesion) + (1 - truth) * np.log(1 - p_lesion))
    if truth.sum() == 0:
        return bce, 0.0
    dice = (2 * (p_lesion * truth).sum() + 1e-5) / (p_lesion.sum() + truth.sum() + 1e-5)
    return bce, 1 - dice


@pytest.mark.parametrize("with_lesion", [True, False])
def test_union_terms_match_hand_computation(with_lesion):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, size=(2, 5, 3, 4, 4)).astype(np.float32)
    target = rng.integers(0, 2, size=(2, 1, 3, 4, 4))
    if with_lesion:
        target[0, 0, 1, 1:3, 1:3] = 3
        target[1, 0, 2, 0, 0] = 4
    loss = LesionUnionLoss(ZeroLoss(), [2, 3, 4])
    bce, dice_loss = loss.union_terms(torch.from_numpy(logits), torch.from_numpy(target))
    want_bce, want_dice = _by_hand(logits.astype(np.float64), target, [2, 3, 4])
    assert bce.item() == pytest.approx(want_bce, rel=1e-5)
    assert dice_loss.item() == pytest.approx(want_dice, rel=1e-5, abs=1e-7)
    total = loss(torch.from_numpy(logits), torch.from_numpy(target))
    assert total.item() == pytest.approx(want_bce + want_dice, rel=1e-5)


def test_adds_to_base_loss_with_weight_and_gives_finite_gradients():
    logits = torch.randn(1, 4, 2, 8, 8, requires_grad=True)
    target = torch.zeros(1, 1, 2, 8, 8, dtype=torch.long)
    target[0, 0, :, 2:5, 2:5] = 3

    class Constant(torch.nn.Module):
        def forward(self, logits, target):
            return torch.tensor(7.0)

    loss = LesionUnionLoss(Constant(), [2, 3], weight=0.5)
    bce, dice_loss = loss.union_terms(logits, target)
    value = loss(logits, target)
    assert value.item() == pytest.approx(7.0 + 0.5 * (bce.item() + dice_loss.item()), rel=1e-6)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_confident_correct_prediction_costs_almost_nothing():
    target = torch.zeros(1, 1, 1, 4, 4, dtype=torch.long)
    target[0, 0, 0, :2] = 2
    logits = torch.full((1, 3, 1, 4, 4), -20.0)
    logits[:, 0][target[:, 0] == 0] = 20.0
    logits[:, 2][target[:, 0] == 2] = 20.0
    bce, dice_loss = LesionUnionLoss(ZeroLoss(), [2]).union_terms(logits, target)
    assert bce.item() < 1e-6 and dice_loss.item() < 1e-6


def test_needs_a_lesion_channel():
    with pytest.raises(ValueError, match="at least one lesion channel"):
        LesionUnionLoss(ZeroLoss(), [])


def test_trainer_builds_the_recipe_and_trains_on_the_tiny_dataset(tiny_model_env, monkeypatch):
    """nnU-Net builds nnUNetTrainerPLUS_lesionFocus from the plugin folder; its loss wraps LesionUnionLoss
    around nnU-Net's Dice + CE (lesion CE weight, batch Dice), its optimiser is AdamW, and real train steps
    on nnU-Net's data loader give finite losses."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_plus.trainers.nnUNetTrainerPLUS_lesionFocus import ADAM_LR, LESION_CE_WEIGHT

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = get_trainer_from_args(str(tiny_model_env.dataset_id), tiny_model_env.configuration, 0,
                                    "nnUNetTrainerPLUS_lesionFocus", tiny_model_env.plans, device=torch.device("cpu"))
    trainer.on_train_start()
    try:
        union = trainer.loss.loss
        # nnU-Net imports the plugin folder's modules as top-level modules: compare by class name
        assert type(union).__name__ == "LesionUnionLoss" and union.lesion_channels == [2, 3]
        assert union.base.ce.weight.tolist() == [1.0, 1.0, LESION_CE_WEIGHT, LESION_CE_WEIGHT]
        assert union.base.dc.batch_dice is True
        assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.initial_lr == ADAM_LR
        losses = [trainer.train_step(next(trainer.dataloader_train))["loss"] for _ in range(2)]
        assert all(np.isfinite(v) for v in losses)
    finally:
        trainer.dataloader_train = trainer.dataloader_val = None
