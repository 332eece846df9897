"""Tests of the PLUS loss (L_L focal per patient, L_P patient max-malignant BCE, L_S screening BCE)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_plus.classifier.loss import inverse_frequency_weights, plus_loss

EPS = 1e-6
# 2 lesion classes (0 malignant, 1 benign) + "not a lesion" (2)
CLASSES = {"malignant_classes": [0], "benign_classes": [1]}


def _loss(logits, targets, index, malignant, tumor, **kwargs):
    return plus_loss(torch.as_tensor(logits, dtype=torch.float32), torch.as_tensor(targets, dtype=torch.long),
                     torch.as_tensor(index, dtype=torch.long), torch.as_tensor(malignant, dtype=torch.float32),
                     torch.as_tensor(tumor, dtype=torch.float32), num_patients=len(malignant),
                     **{**CLASSES, **kwargs})


def test_uniform_logits_by_hand():
    # every p = 1/3: focal = (2/3)^2 ln 3; p_malig = 1/3; p_tumor = 2/3; patient 2 has no candidate
    out = _loss(np.zeros((3, 3)), [0, 2, 1], [0, 0, 1], malignant=[1, 0, 0], tumor=[1, 1, 0])
    lesion = 4 / 9 * math.log(3)
    patient = (math.log(3) + math.log(1.5) - math.log(1 - EPS)) / 3
    screening = (2 * math.log(1.5) - math.log(1 - EPS)) / 3
    assert out["lesion"].item() == pytest.approx(lesion, rel=1e-6)
    assert out["patient"].item() == pytest.approx(patient, rel=1e-6)
    assert out["screening"].item() == pytest.approx(screening, rel=1e-6)
    assert out["total"].item() == pytest.approx(0.5 * lesion + 0.3 * patient + 0.2 * screening, rel=1e-6)
    assert out["distill"].item() == 0.0
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in out.values())


LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 1.5, -0.3], [-1.0, 0.0, 2.0], [0.3, 0.2, 0.1], [1.2, -0.4, 0.0]])
TARGETS = [0, 1, 2, 0, 1]
INDEX = [0, 0, 0, 1, 3]  # patient 2 has no candidate
MALIGNANT, TUMOR = [1, 1, 0, 0], [1, 1, 1, 1]


def _numpy_reference(weights, gamma, alpha, beta):
    p = np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True)
    per_patient = {}
    for i, (t, j) in enumerate(zip(TARGETS, INDEX)):
        per_patient.setdefault(j, []).append(-weights[t] * (1 - p[i, t]) ** gamma * np.log(p[i, t]))
    lesion = np.mean([np.mean(v) for v in per_patient.values()])

    def bce(values, labels):
        terms = []
        for j, y in enumerate(labels):
            m = max([values[i] for i in range(len(INDEX)) if INDEX[i] == j], default=0.0)
            m = min(max(m, EPS), 1 - EPS)
            terms.append(-(y * np.log(m) + (1 - y) * np.log(1 - m)))
        return np.mean(terms)

    patient = bce(p[:, 0], MALIGNANT)
    screening = bce(p[:, 0] + p[:, 1], TUMOR)
    return lesion, patient, screening, alpha * lesion + beta * patient + (1 - alpha - beta) * screening


@pytest.mark.parametrize("weights, gamma, alpha, beta", [
    (None, 2.0, 0.5, 0.3), ([2.0, 0.5, 1.0], 2.0, 0.5, 0.3), ([1.0, 3.0, 0.2], 0.0, 0.2, 0.6),
])
def test_against_numpy(weights, gamma, alpha, beta):
    kwargs = {"gamma": gamma, "alpha": alpha, "beta": beta}
    if weights is not None:
        kwargs["class_weights"] = torch.tensor(weights)
    out = _loss(LOGITS, TARGETS, INDEX, MALIGNANT, TUMOR, **kwargs)
    expected = _numpy_reference(weights or [1.0, 1.0, 1.0], gamma, alpha, beta)
    for key, value in zip(("lesion", "patient", "screening", "total"), expected):
        assert out[key].item() == pytest.approx(value, rel=1e-5), key


def test_lesion_term_is_averaged_per_patient_not_per_lesion():
    # patient 0: three easy candidates, patient 1: one hard candidate -> the hard one weighs 1/2, not 1/4
    logits = np.array([[5.0, 0, 0], [5.0, 0, 0], [5.0, 0, 0], [0, 0, 0]])
    out = _loss(logits, [0, 0, 0, 0], [0, 0, 0, 1], [1, 1], [1, 1], gamma=0.0)
    easy = -math.log(math.exp(5) / (math.exp(5) + 2))
    assert out["lesion"].item() == pytest.approx((easy + math.log(3)) / 2, rel=1e-6)


def test_patient_term_uses_the_max_lesion():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]], requires_grad=True)
    out = plus_loss(logits, torch.tensor([0, 2]), torch.tensor([0, 0]), torch.tensor([1.0]), torch.tensor([1.0]),
                    num_patients=1, alpha=0.0, beta=1.0, **CLASSES)
    p_malig = math.exp(4) / (math.exp(4) + 2)
    assert out["patient"].item() == pytest.approx(-math.log(p_malig), rel=1e-5)
    out["total"].backward()
    assert logits.grad[0].abs().sum() > 0
    assert torch.all(logits.grad[1] == 0)  # the non-max lesion gets no patient-level gradient


def test_patient_without_candidates():
    # a tumour patient nnU-Net missed entirely: constant -log(eps) in L_P and L_S; the total still backprops
    logits = torch.zeros((0, 3), requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    out = plus_loss(logits, empty, empty, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]), num_patients=2,
                    **CLASSES)
    expected = (-math.log(EPS) - math.log(1 - EPS)) / 2
    assert out["lesion"].item() == 0.0
    assert out["patient"].item() == pytest.approx(expected, rel=1e-6)
    assert out["screening"].item() == pytest.approx(expected, rel=1e-6)
    out["total"].backward()
    assert logits.grad.shape == (0, 3)


def test_distillation_term():
    logits = np.array([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    out = _loss(logits, [0, 2], [0, 0], [1], [1], distill_targets=teacher, distill_weight=0.5)
    plain = _loss(logits, [0, 2], [0, 0], [1], [1])
    p0 = np.exp(logits[0]) / np.exp(logits[0]).sum()
    kl0 = -math.log(p0[0])
    kl1 = sum(t * math.log(t / (1 / 3)) for t in (0.5, 0.25, 0.25))
    assert out["distill"].item() == pytest.approx((kl0 + kl1) / 2, rel=1e-6)
    assert out["total"].item() == pytest.approx(plain["total"].item() + 0.5 * (kl0 + kl1) / 2, rel=1e-6)


def test_amp_inputs_give_float32():
    logits = torch.tensor(LOGITS, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = logits.to(torch.bfloat16)
        out = _loss(half, TARGETS, INDEX, MALIGNANT, TUMOR)
    reference = _loss(half.float(), TARGETS, INDEX, MALIGNANT, TUMOR)
    for key in out:
        assert out[key].dtype == torch.float32
        assert out[key].item() == pytest.approx(reference[key].item(), rel=1e-6)


def test_inverse_frequency_weights():
    torch.testing.assert_close(inverse_frequency_weights([10, 30, 0, 60]),
                               torch.tensor([10 / 3, 10 / 9, 0.0, 5 / 9]))
    torch.testing.assert_close(inverse_frequency_weights(torch.tensor([10, 40]), power=0.5),
                               torch.tensor([5 / 3, 5 / 6]))
    torch.testing.assert_close(inverse_frequency_weights([3, 7], power=0.0), torch.tensor([1.0, 1.0]))
    for bad in ([], [0, 0], [1, -1]):
        with pytest.raises(ValueError):
            inverse_frequency_weights(bad)


@pytest.mark.parametrize("change, match", [
    ({"alpha": 0.8, "beta": 0.3}, "alpha"),
    ({"malignant_classes": [0], "benign_classes": [0]}, "disjoint"),
    ({"malignant_classes": [2], "benign_classes": [1]}, "not a lesion"),
    ({"malignant_classes": [], "benign_classes": [1]}, "malignant_classes"),
    ({"class_weights": torch.ones(2)}, "class_weights"),
    ({"gamma": -1.0}, "gamma"),
    ({"distill_targets": torch.ones(2, 2)}, "distill_targets"),
])
def test_bad_options(change, match):
    kwargs = {**CLASSES, **change}
    with pytest.raises(ValueError, match=match):
        plus_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0, 0]), torch.ones(1), torch.ones(1),
                  num_patients=1, **kwargs)


def test_bad_tensors():
    ok = {"num_patients": 2, **CLASSES}
    with pytest.raises(ValueError, match="targets must lie"):
        plus_loss(torch.zeros(2, 3), torch.tensor([0, 3]), torch.tensor([0, 1]), torch.ones(2), torch.ones(2), **ok)
    with pytest.raises(ValueError, match="lesion_to_patient must lie"):
        plus_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0, 2]), torch.ones(2), torch.ones(2), **ok)
    with pytest.raises(ValueError, match="patient_malignant"):
        plus_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]), torch.ones(3), torch.ones(2), **ok)
    with pytest.raises(ValueError, match="0/1"):
        plus_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]), torch.ones(2), 2 * torch.ones(2),
                  **ok)
    with pytest.raises(ValueError, match="long"):
        plus_loss(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), torch.ones(2), torch.ones(2),
                  **ok)
