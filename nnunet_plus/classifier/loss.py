"""The PLUS training loss (§2.2): ``L_total = alpha L_L + beta L_P + (1 - alpha - beta) L_S``.

A batch is a set of ``M`` patients holding ``N >= 0`` lesion candidates; ``lesion_to_patient`` says whose
each candidate is. With ``p = softmax(logits)`` over the ``C + 1`` classes (last = "not a lesion"):

``L_L`` (lesion)
    focal loss ``-z_y (1 - p_y)^gamma log p_y`` of every candidate against its target class ``y``
    ("not a lesion" for a false-positive candidate), averaged over each patient's candidates, then over the
    patients that have at least one candidate (0 when no patient has one).
``L_P`` (patient diagnosis)
    BCE between the patient's malignancy label and ``max_i p_i,malig``, the largest over the patient's
    candidates of ``p_malig = sum of p over the malignant classes``.
``L_S`` (screening)
    BCE between the patient's "has any tumour" label and ``q = max_i (p_i,malig + p_i,benign)``.

A patient without candidates still counts in ``L_P`` and ``L_S``: its max is 0, clamped to ``eps``, so a
healthy patient adds ``-log(1 - eps) ~ 0`` and a tumour patient nnU-Net missed entirely adds the constant
``-log(eps)`` (no gradient: the classifier cannot recover a lesion that is not a candidate). All maxima are
clamped to ``[eps, 1 - eps]``. Everything is computed in float32 with autocast disabled (AMP-safe).

For ``fusion="distill"`` the trainer adds ``distill_weight * KL(prior || p)`` (averaged over candidates) by
passing ``distill_targets=prior_distribution(priors)``; it is reported as ``"distill"`` (0 otherwise).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

#: Suggested ``distill_weight`` for ``fusion="distill"`` (our choice; the paper gives none).
DEFAULT_DISTILL_WEIGHT = 0.5


def inverse_frequency_weights(counts: Sequence[int] | torch.Tensor, *, power: float = 1.0) -> torch.Tensor:
    """Class weights ``z_c`` proportional to ``count_c ** -power`` (``power=1``: inverse frequency).

    Parameters
    ----------
    counts : number of training candidates of each of the ``C + 1`` classes (incl. "not a lesion").
    power : 1 for inverse frequency, 0.5 for the milder inverse square root, 0 for uniform weights.

    Returns
    -------
    float32 tensor ``(C + 1,)`` scaled so that the average weight over the training candidates is 1
    (``sum_c count_c z_c = sum_c count_c``). A class with no training candidate gets weight 0.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0 or bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError(f"counts must be a non-empty 1-D sequence of non-negative numbers, got {counts.tolist()}")
    if counts.sum() <= 0:
        raise ValueError("counts are all zero: no training candidates to weight")
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts[present] ** -power
    weights *= counts.sum() / (counts * weights).sum()
    return weights.float()


def plus_loss(logits: torch.Tensor, targets: torch.Tensor, lesion_to_patient: torch.Tensor,
              patient_malignant: torch.Tensor, patient_tumor: torch.Tensor, *, num_patients: int,
              malignant_classes: Sequence[int], benign_classes: Sequence[int],
              class_weights: torch.Tensor | None = None, alpha: float = 0.5, beta: float = 0.3,
              gamma: float = 2.0, eps: float = 1e-6, distill_targets: torch.Tensor | None = None,
              distill_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """PLUS loss of one batch.

    Parameters
    ----------
    logits : ``(N, C + 1)`` classifier logits (any float dtype); the last column is "not a lesion".
    targets : ``(N,)`` long target class of each candidate in ``[0, C]`` (``C`` = not a lesion).
    lesion_to_patient : ``(N,)`` long patient index of each candidate in ``[0, num_patients)``.
    patient_malignant : ``(M,)`` 0/1 (bool, int or float): the patient has a malignant lesion (``Y_j``).
    patient_tumor : ``(M,)`` 0/1: the patient has any lesion (``y_j``).
    num_patients : ``M`` (patients without candidates included).
    malignant_classes, benign_classes : disjoint column indices in ``[0, C)``; malignant must not be empty.
    class_weights : ``(C + 1,)`` focal weights ``z_c``; ``None`` = all 1. PLUS's default is inverse frequency:
        compute it once on the training candidates with :func:`inverse_frequency_weights`.
    alpha, beta : loss weights (paper: 0.5, 0.3); ``alpha, beta >= 0`` and ``alpha + beta <= 1``.
    gamma : focal exponent (paper: not given; 2 is the usual value).
    eps : clamp of the patient-level maxima.
    distill_targets : ``(N, C + 1)`` teacher distribution for ``fusion="distill"`` (or ``None``).
    distill_weight : weight of the distillation term (added on top of ``L_total``).

    Returns
    -------
    dict of float32 scalars ``total``, ``lesion`` (L_L), ``patient`` (L_P), ``screening`` (L_S), ``distill``.
    """
    n, num_classes = _check(logits, targets, lesion_to_patient, patient_malignant, patient_tumor, num_patients,
                            malignant_classes, benign_classes, class_weights, alpha, beta, gamma, eps,
                            distill_targets, distill_weight)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = F.log_softmax(logits.float(), dim=1)
        p = log_p.exp()
        index = lesion_to_patient.to(logits.device)
        targets = targets.to(logits.device)

        lesion = _focal_lesion_loss(log_p, targets, index, class_weights, gamma, num_patients)
        # L_P and L_S: BCE on the per-patient max of the malignant / any-tumour probability
        p_malignant = p[:, list(malignant_classes)].sum(dim=1)
        p_tumor = p_malignant + p[:, list(benign_classes)].sum(dim=1)
        patient = _patient_max_bce(p_malignant, index, patient_malignant, num_patients, eps)
        screening = _patient_max_bce(p_tumor, index, patient_tumor, num_patients, eps)

        total = alpha * lesion + beta * patient + (1.0 - alpha - beta) * screening
        if distill_targets is not None:
            teacher = distill_targets.to(device=logits.device, dtype=torch.float32)
            distill = (torch.xlogy(teacher, teacher) - teacher * log_p).sum(dim=1).sum() / max(n, 1)
            total = total + distill_weight * distill
        else:
            distill = total.new_zeros(())
    return {"total": total, "lesion": lesion, "patient": patient, "screening": screening, "distill": distill}


def _focal_lesion_loss(log_p: torch.Tensor, targets: torch.Tensor, index: torch.Tensor,
                       class_weights: torch.Tensor | None, gamma: float, num_patients: int) -> torch.Tensor:
    """L_L: the focal loss of every candidate, averaged per patient, then over the patients with candidates."""
    log_p_target = log_p.gather(1, targets[:, None]).squeeze(1)
    focal = -((1.0 - log_p_target.exp()) ** gamma) * log_p_target
    if class_weights is not None:
        focal = focal * class_weights.to(device=log_p.device, dtype=torch.float32)[targets]
    per_patient_count = torch.bincount(index, minlength=num_patients).float()
    with_candidates = int((per_patient_count > 0).sum())
    return (focal / per_patient_count[index].clamp(min=1.0)).sum() / max(with_candidates, 1)


def _patient_max_bce(prob: torch.Tensor, index: torch.Tensor, labels: torch.Tensor, num_patients: int,
                     eps: float) -> torch.Tensor:
    """Mean over patients of BCE(label_j, clamp(max_{i in patient j} prob_i)); no candidate -> max 0."""
    patient_max = prob.new_zeros(num_patients).scatter_reduce(0, index, prob, reduce="amax", include_self=True)
    patient_max = patient_max.clamp(eps, 1.0 - eps)
    y = labels.to(device=prob.device, dtype=torch.float32)
    return -(y * patient_max.log() + (1.0 - y) * (1.0 - patient_max).log()).mean()


def _check(logits, targets, lesion_to_patient, patient_malignant, patient_tumor, num_patients, malignant_classes,
           benign_classes, class_weights, alpha, beta, gamma, eps, distill_targets, distill_weight) -> tuple[int, int]:
    if logits.ndim != 2 or logits.shape[1] < 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be float (N, C + 1) with C >= 1, got {logits.dtype} {tuple(logits.shape)}")
    n, num_classes = logits.shape
    for name, value in (("targets", targets), ("lesion_to_patient", lesion_to_patient)):
        if value.shape != (n,) or value.dtype != torch.long:
            raise ValueError(f"{name} must be a long tensor of shape ({n},), got {value.dtype} {tuple(value.shape)}")
    if num_patients < 1:
        raise ValueError(f"num_patients must be >= 1, got {num_patients}")
    for name, value in (("patient_malignant", patient_malignant), ("patient_tumor", patient_tumor)):
        if value.shape != (num_patients,):
            raise ValueError(f"{name} must have shape ({num_patients},), got {tuple(value.shape)}")
        if value.numel() and (float(value.min()) < 0 or float(value.max()) > 1):
            raise ValueError(f"{name} must hold 0/1 labels")
    if n and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes})")
    if n and (int(lesion_to_patient.min()) < 0 or int(lesion_to_patient.max()) >= num_patients):
        raise ValueError(f"lesion_to_patient must lie in [0, {num_patients})")
    malignant, benign = [int(c) for c in malignant_classes], [int(c) for c in benign_classes]
    if not malignant:
        raise ValueError("malignant_classes must not be empty")
    if set(malignant) & set(benign) or len(set(malignant)) != len(malignant) or len(set(benign)) != len(benign):
        raise ValueError(f"malignant_classes {malignant} and benign_classes {benign} must be disjoint, without repeats")
    if any(c < 0 or c >= num_classes - 1 for c in malignant + benign):
        raise ValueError(f"malignant/benign classes must lie in [0, {num_classes - 1}) (the last column is "
                         f"'not a lesion')")
    if class_weights is not None and (class_weights.shape != (num_classes,) or bool((class_weights < 0).any())):
        raise ValueError(f"class_weights must be non-negative of shape ({num_classes},), "
                         f"got {tuple(class_weights.shape)}")
    if alpha < 0 or beta < 0 or alpha + beta > 1:
        raise ValueError(f"need alpha >= 0, beta >= 0 and alpha + beta <= 1, got alpha={alpha}, beta={beta}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    if distill_targets is not None and distill_targets.shape != (n, num_classes):
        raise ValueError(f"distill_targets must be ({n}, {num_classes}), got {tuple(distill_targets.shape)}")
    if distill_weight < 0:
        raise ValueError(f"distill_weight must be >= 0, got {distill_weight}")
    return n, num_classes
