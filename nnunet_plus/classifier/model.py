"""The PLUS network: lesion encoder E^S + liver encoder E^H -> HDA -> prior fusion (GPR) -> class head.

Inputs of one batch (a set of ``B`` patients with ``N`` lesion candidates in all; ``N`` may be 0):

* ``lesion_crops`` ``(N, in_channels + 1, Dz, Dy, Dx)``: every image channel of the lesion ROI plus the
  candidate's mask (in [0, 1]) as the last channel (paper ROI: 64x64x16 voxels, ``Dz, Dy, Dx = 16, 64, 64``).
  The paper feeds ``I * M_s`` to E^S; we give the mask as a channel instead, so the encoder sees the
  lesion border and its surroundings and can still learn to mask.
* ``priors`` ``(N, C)``: nnU-Net's prior ``P`` per candidate, e.g. the mean softmax of each of the ``C``
  lesion classes over the candidate's voxels (values in [0, 1], rows summing to at most 1).
* ``candidate_features`` ``(N, 3 + C)``: what nnU-Net said about the candidate beyond ``P``
  (:func:`candidate_features`: tier, max probability, size, nnU-Net's class).
* ``liver`` ``(B, in_channels, Lz, Ly, Lx)``: each patient's image masked to the liver (``I * M_H``),
  cropped and resampled to a fixed shape (e.g. ``32 x 64 x 64``, giving a ``4 x 4 x 4`` liver map).
* ``lesion_to_patient`` ``(N,)`` long: the patient (row of ``liver``) of every candidate.

Output: logits ``(N, C + 1)``; columns ``0..C-1`` are the lesion classes in the order of ``priors`` (the
schema's ``lesions`` order), the last column is "not a lesion" (a false-positive candidate).

Guarded by construction: ``logits = (1 + s) log(smoothed prior) + correction``. The correction has two terms:

* a linear term over the candidate's *description* (:meth:`PLUSClassifier.description`): the candidate
  features, simple statistics of the crop (mean / spread of each image channel inside the candidate mask, in a
  ring around it and over the ROI, the mask's share of the ROI) and of its patient's liver (mean / spread of
  each channel over the liver input: fatty, cirrhotic or normal parenchyma, the context that separates types of
  the same local look), standardised with the training candidates' mean and spread (buffers). The trainer fits
  this term, with ``s``, to convergence before the first epoch (:mod:`nnunet_plus.classifier.warm_start`, a
  regularised multinomial logistic regression with the log prior as offset), so the few epochs a demo affords
  start from what these numbers already tell;
* a linear head over the image features (lesion and liver encoders -> HDA -> prior fusion, GPR by default)
  concatenated with an embedding of the same description: what the images add, learnt by the epochs.

Both start at zero and ``s`` (a learnable prior scale, decayed towards 1) at 0, so an untrained network returns
nnU-Net's prior (smoothed by ``PRIOR_SMOOTHING``, same ranking) and training learns only what to change.

The prior is turned into a distribution over the ``C + 1`` output classes by :func:`prior_distribution`
(the mass nnU-Net gave to non-lesion labels becomes the "not a lesion" entry); the fusion modes are
described in :mod:`nnunet_plus.classifier.fusion`.

A checkpoint rebuilds the network with ``PLUSClassifier.from_config(model.to_config())`` (a JSON-ready dict)
followed by ``load_state_dict``.

Contract for the candidate bank and the trainer (issue 5, items 1 and 4)
------------------------------------------------------------------------
* Class order: ``schema.lesions`` gives columns ``0..C-1`` of ``priors`` and of the logits; the target of a
  candidate is the index of its matched reference lesion type, or ``C`` ("not a lesion") for a false
  positive. ``malignant_classes`` / ``benign_classes`` of the loss are
  ``[schema.lesions.index(name) for name in schema.malignant]`` (and ``benign``).
* Crop geometry: ROI ``(Dz, Dy, Dx) = (16, 64, 64)`` at nnU-Net's target spacing, normalised image
  channels, mask channel last with values in [0, 1] (binary or soft). Any size works as long as the final
  feature map of the encoders (total stride ``(8, 16, 16)``) keeps more than one voxel; sizes that are not
  multiples of the stride are zero-padded. All candidates of a batch share one crop shape; all livers share
  one liver shape.
* A batch is built from whole patients: concatenate the patients' candidates (a patient may have none),
  stack their livers, and set ``lesion_to_patient`` to each candidate's row in the liver stack. Per patient
  the loss also needs ``patient_malignant`` and ``patient_tumor`` (0/1): the reference labels the candidates
  can reach (a patient is malignant only when one of its candidates is matched to a malignant reference
  lesion; :mod:`nnunet_plus.classifier.data`).
* Training step: ``logits = model(crops, priors, features, liver, index)`` under autocast, then
  ``plus_loss(logits, targets, index, patient_malignant, patient_tumor, num_patients=B, malignant_classes=...,
  benign_classes=..., class_weights=inverse_frequency_weights(train_counts))``; for ``fusion="distill"``
  (``model.needs_prior_target``) add ``distill_targets=prior_distribution(priors)`` and
  ``distill_weight=DEFAULT_DISTILL_WEIGHT``.
* Inference: ``softmax(logits)``, then the fitted decision rule of
  :mod:`nnunet_plus.classifier.operating_point` (which candidates are kept, with which type); the patient's
  malignant / tumour probabilities are the maxima over
  its candidates of the summed malignant / (malignant + benign) columns, as in the loss.
* Each lesion's logits depend only on its own crop, prior and its patient's liver (instance norm, per-lesion
  attention), so results do not depend on how candidates are batched.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nnunet_plus.classifier.encoders import DEFAULT_STEM_STRIDE, ResNetEncoder3d, encoder_preset
from nnunet_plus.classifier.fusion import FUSION_MODES, build_fusion
from nnunet_plus.classifier.hda import HierarchicalDualAttention

#: share of a uniform distribution mixed into the prior before its log: bounds the base logits' gaps (to
#: log(1 + (1 - PRIOR_SMOOTHING) (C + 1) / PRIOR_SMOOTHING), ~1.0 for 7 classes) so that a short training can
#: overturn a confidently wrong nnU-Net type; the ranking, hence the untrained answer, is nnU-Net's. 0.8 rather
#: than 0.5: on the demo's seed-0 cohort the fitted rule's out-of-fold lesion F1 rose from 13.1 to 29.1 % (and
#: a gradient-boosting peer does better without nnU-Net's prior at all), see benchmarks/RESULTS.md
PRIOR_SMOOTHING = 0.8
#: width of the candidate-feature embedding
CANDIDATE_EMBEDDING = 64
#: voxels (each side) of the ring around the candidate mask whose intensities the crop statistics use
RING_WIDTH = 2
#: per image channel: mean and spread inside the mask, mean in the ring, mean over the ROI; plus the mask share
CROP_STATISTICS_PER_CHANNEL = 4
#: per image channel: mean and spread over the liver voxels of the liver input
LIVER_STATISTICS_PER_CHANNEL = 2


def candidate_features(tier, max_probability, volume_mm3, nnunet_class, num_lesion_classes: int) -> np.ndarray:
    """``(N, 3 + C)`` float32 numpy features of ``N`` candidates: confident (1) / suspicious (0), nnU-Net's max
    summed lesion probability over the candidate, ``log10(1 + volume mm3) / 4`` and the one-hot of nnU-Net's
    class (``C`` columns; a class index ``>= C`` gives all zeros)."""
    import numpy as np

    tier = np.asarray(tier).reshape(-1)
    n = tier.shape[0]
    out = np.zeros((n, 3 + num_lesion_classes), dtype=np.float32)
    out[:, 0] = tier == 0
    out[:, 1] = np.asarray(max_probability, dtype=np.float32).reshape(-1)
    out[:, 2] = np.log10(1.0 + np.maximum(np.asarray(volume_mm3, dtype=np.float64).reshape(-1), 0.0)) / 4.0
    classes = np.asarray(nnunet_class, dtype=np.int64).reshape(-1)
    valid = (classes >= 0) & (classes < num_lesion_classes)
    out[np.flatnonzero(valid), 3 + classes[valid]] = 1.0
    return out


def crop_statistics(lesion_crops: torch.Tensor) -> torch.Tensor:
    """``(N, 4 C + 1)`` statistics of ``(N, C + 1, Z, Y, X)`` crops (mask last): per image channel the mean and
    standard deviation inside the mask, the mean in a ring of ``RING_WIDTH`` voxels around it and the ROI mean,
    then the mask's share of the ROI."""
    crops = lesion_crops.float()
    image, mask = crops[:, :-1], crops[:, -1:].clamp(0.0, 1.0)
    kernel = 2 * RING_WIDTH + 1
    grown = F.max_pool3d(mask, kernel, stride=1, padding=RING_WIDTH)
    ring = (grown - mask).clamp(min=0.0)

    def weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (values * weight).sum(dim=(2, 3, 4)) / weight.sum(dim=(2, 3, 4)).clamp(min=1e-6)

    inside = weighted_mean(image, mask)
    spread = weighted_mean((image - inside[..., None, None, None]) ** 2, mask).clamp(min=0.0).sqrt()
    return torch.cat([inside, spread, weighted_mean(image, ring), image.mean(dim=(2, 3, 4)),
                      mask.mean(dim=(1, 2, 3, 4))[:, None]], dim=1)


def liver_statistics(liver: torch.Tensor) -> torch.Tensor:
    """``(B, 2 C)`` mean and standard deviation of each channel of ``(B, C, Z, Y, X)`` liver inputs over the
    liver voxels: those of the first channel above its minimum (the input is ``I * M_H`` padded with the
    minimum, :func:`~nnunet_plus.classifier.crops.liver_input`); zeros for a patient without liver voxels."""
    liver = liver.float()
    first = liver[:, :1]
    floor = first.amin(dim=(2, 3, 4), keepdim=True)
    weight = (first > floor + 1e-3).float()
    count = weight.sum(dim=(2, 3, 4))
    mean = (liver * weight).sum(dim=(2, 3, 4)) / count.clamp(min=1.0)
    spread = (((liver - mean[..., None, None, None]) ** 2) * weight).sum(dim=(2, 3, 4)) / count.clamp(min=1.0)
    return torch.cat([mean, spread.clamp(min=0.0).sqrt()], dim=1)


def prior_distribution(priors: torch.Tensor) -> torch.Tensor:
    """Extend an ``(N, C)`` lesion-class prior to a distribution over the ``C + 1`` classifier classes.

    The "not a lesion" entry is ``max(0, 1 - sum_c P_c)``; each row is then divided by its sum, so rows whose
    lesion mass exceeds 1 are renormalised and an all-zero row becomes "not a lesion" with probability 1.
    Negative entries are clipped to 0. Returns float32 ``(N, C + 1)``.
    """
    if priors.ndim != 2:
        raise ValueError(f"priors must be (N, C), got {tuple(priors.shape)}")
    priors = priors.float().clamp(min=0.0)
    rest = (1.0 - priors.sum(dim=1, keepdim=True)).clamp(min=0.0)
    extended = torch.cat([priors, rest], dim=1)
    return extended / extended.sum(dim=1, keepdim=True)


class PLUSClassifier(nn.Module):
    """PLUS second-stage lesion classifier.

    Parameters
    ----------
    in_channels : image channels (1 for NCCT; more for multi-phase input). The lesion encoder gets one more
        (the candidate mask).
    num_lesion_classes : ``C``, the number of lesion types (the output has ``C + 1`` columns).
    preset : encoder size, ``"paper"`` (ResNet-18, 64-128-256-512, 2 blocks/stage) or ``"tiny"``
        (8-16-32-64, 1 block/stage, for CPU tests).
    fusion : how the prior is used: ``"gpr"`` (default), ``"none"``, ``"distill"``, ``"gated"``, ``"weighted"``.
    hda_scales : ``K``, the number of liver pooling scales of HDA (paper: 4).
    num_heads : attention heads in HDA and GPR (1 = the paper's single-head formula).
    dropout : dropout on attention weights and before the classification head.
    widths, blocks_per_stage : override the preset's encoder stage widths / depths (4 entries each).
    stem_stride : stride ``(z, y, x)`` of both encoders' stem convolution.
    norm : ``"instance"`` (default) or ``"batch"`` normalisation in the encoders.
    """

    def __init__(self, in_channels: int, num_lesion_classes: int, *, preset: str = "tiny", fusion: str = "gpr",
                 hda_scales: int = 4, num_heads: int = 1, dropout: float = 0.0,
                 widths: Sequence[int] | None = None, blocks_per_stage: Sequence[int] | None = None,
                 stem_stride: Sequence[int] = DEFAULT_STEM_STRIDE, norm: str = "instance") -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_lesion_classes < 1:
            raise ValueError(f"num_lesion_classes must be >= 1, got {num_lesion_classes}")
        if fusion not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {fusion!r}; choose one of {FUSION_MODES}")
        arch = encoder_preset(preset)
        if widths is not None:
            arch["widths"] = tuple(int(w) for w in widths)
        if blocks_per_stage is not None:
            arch["blocks_per_stage"] = tuple(int(b) for b in blocks_per_stage)
        self._config: dict[str, Any] = {
            "in_channels": int(in_channels), "num_lesion_classes": int(num_lesion_classes), "preset": preset,
            "fusion": fusion, "hda_scales": int(hda_scales), "num_heads": int(num_heads), "dropout": float(dropout),
            "widths": list(arch["widths"]), "blocks_per_stage": list(arch["blocks_per_stage"]),
            "stem_stride": [int(s) for s in stem_stride], "norm": norm,
        }
        self.in_channels = int(in_channels)
        self.num_lesion_classes = int(num_lesion_classes)
        self.num_classes = self.num_lesion_classes + 1
        self.fusion_mode = fusion
        encoder_kwargs = {"stem_stride": stem_stride, "norm": norm, **arch}
        self.lesion_encoder = ResNetEncoder3d(self.in_channels + 1, **encoder_kwargs)  # E^S
        self.liver_encoder = ResNetEncoder3d(self.in_channels, **encoder_kwargs)  # E^H
        self.dim = self.lesion_encoder.out_channels
        self.hda = HierarchicalDualAttention(self.dim, num_scales=hda_scales, num_heads=num_heads, dropout=dropout)
        self.fusion = build_fusion(fusion, self.dim, self.num_classes, num_heads=num_heads, dropout=dropout)
        self.num_candidate_features = 3 + self.num_lesion_classes
        statistics = (CROP_STATISTICS_PER_CHANNEL + LIVER_STATISTICS_PER_CHANNEL) * self.in_channels + 1
        self.description_dim = self.num_candidate_features + statistics
        # standardisation of the description: the training candidates' mean and spread (set by the trainer)
        self.register_buffer("description_mean", torch.zeros(self.description_dim))
        self.register_buffer("description_scale", torch.ones(self.description_dim))
        self.candidate_encoder = nn.Sequential(
            nn.Linear(self.description_dim, CANDIDATE_EMBEDDING), nn.GELU(),
            nn.Linear(CANDIDATE_EMBEDDING, CANDIDATE_EMBEDDING), nn.GELU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.dim + CANDIDATE_EMBEDDING, self.num_classes))
        self.description_head = nn.Linear(self.description_dim, self.num_classes)  # the linear term
        for layer in (self.head[-1], self.description_head):  # the guard: an untrained network adds nothing
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.prior_scale = nn.Parameter(torch.zeros(()))  # s of (1 + s) log prior; weight decay pulls it to 0

    def parameter_groups(self, learning_rate: float, *, correction_factor: float) -> list[dict]:
        """Optimizer groups: the encoders, HDA, fusion, the linear description term and the prior scale (both
        fitted by the warm start) at ``learning_rate``; the image head and the description embedding (small,
        starting from zero) at ``correction_factor`` times it."""
        fast = {id(p) for module in (self.head, self.candidate_encoder) for p in module.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in fast], "lr": learning_rate},
                {"params": [p for p in self.parameters() if id(p) in fast], "lr": learning_rate * correction_factor}]

    @property
    def needs_prior_target(self) -> bool:
        """True for ``fusion="distill"``: the loss must get ``distill_targets=prior_distribution(priors)``."""
        return self.fusion_mode == "distill"

    def to_config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-ready dict (store it next to the state dict)."""
        return {key: list(value) if isinstance(value, list) else value for key, value in self._config.items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PLUSClassifier:
        """Build an (untrained) network from :meth:`to_config`'s dict."""
        config = dict(config)
        missing = {"in_channels", "num_lesion_classes"} - config.keys()
        unknown = config.keys() - {"in_channels", "num_lesion_classes", "preset", "fusion", "hda_scales",
                                   "num_heads", "dropout", "widths", "blocks_per_stage", "stem_stride", "norm"}
        if missing or unknown:
            raise ValueError(f"bad PLUSClassifier config: missing {sorted(missing)}, unknown {sorted(unknown)}")
        return cls(config.pop("in_channels"), config.pop("num_lesion_classes"), **config)

    def forward(self, lesion_crops: torch.Tensor, priors: torch.Tensor, candidate_features: torch.Tensor,
                liver: torch.Tensor, lesion_to_patient: torch.Tensor) -> torch.Tensor:
        """Classify ``N`` candidates of ``B`` patients; returns logits ``(N, C + 1)`` (see the module doc)."""
        n = self._check_inputs(lesion_crops, priors, candidate_features, liver, lesion_to_patient)
        if n == 0:  # still a graph node of the head, so a loss on it can call backward()
            return self.head(lesion_crops.new_zeros((0, self.dim + CANDIDATE_EMBEDDING)))
        # encode only the livers of patients that have candidates
        patients, local_index = torch.unique(lesion_to_patient, return_inverse=True)
        liver_map = self.liver_encoder(liver.index_select(0, patients))
        lesion_map = self.lesion_encoder(lesion_crops)
        prior = prior_distribution(priors)
        features = self.fusion(self.hda(lesion_map, liver_map, local_index), prior)
        description = self.standardise(self.description(lesion_crops, candidate_features, liver, lesion_to_patient))
        described = self.candidate_encoder(description.to(features.dtype))
        correction = self.head(torch.cat([features, described], dim=1)).float() + self.description_head(description)
        return (1.0 + self.prior_scale) * self.log_prior(prior) + correction

    @staticmethod
    def log_prior(prior: torch.Tensor) -> torch.Tensor:
        """``(N, C + 1)`` log of nnU-Net's prior (:func:`prior_distribution`'s output), smoothed by
        ``PRIOR_SMOOTHING``."""
        return ((1.0 - PRIOR_SMOOTHING) * prior + PRIOR_SMOOTHING / prior.shape[1]).log()

    @staticmethod
    def description(lesion_crops: torch.Tensor, candidate_features: torch.Tensor, liver: torch.Tensor,
                    lesion_to_patient: torch.Tensor) -> torch.Tensor:
        """``(N, description_dim)`` float32 numbers per candidate, unstandardised: :func:`candidate_features`,
        :func:`crop_statistics` and its patient's :func:`liver_statistics`."""
        patient_liver = liver_statistics(liver).index_select(0, lesion_to_patient)
        return torch.cat([candidate_features.float(), crop_statistics(lesion_crops), patient_liver], dim=1)

    def standardise(self, description: torch.Tensor) -> torch.Tensor:
        """Standardise :meth:`description` with the stored training mean and spread."""
        return (description - self.description_mean) / self.description_scale

    def _check_inputs(self, lesion_crops: torch.Tensor, priors: torch.Tensor, candidate_features: torch.Tensor,
                      liver: torch.Tensor, lesion_to_patient: torch.Tensor) -> int:
        if lesion_crops.ndim != 5 or lesion_crops.shape[1] != self.in_channels + 1:
            raise ValueError(f"lesion_crops must be (N, {self.in_channels + 1}, Dz, Dy, Dx) (image channels + mask), "
                             f"got {tuple(lesion_crops.shape)}")
        n = lesion_crops.shape[0]
        if priors.shape != (n, self.num_lesion_classes):
            raise ValueError(f"priors must be ({n}, {self.num_lesion_classes}), got {tuple(priors.shape)}")
        if candidate_features.shape != (n, self.num_candidate_features):
            raise ValueError(f"candidate_features must be ({n}, {self.num_candidate_features}) (see "
                             f"candidate_features()), got {tuple(candidate_features.shape)}")
        if liver.ndim != 5 or liver.shape[1] != self.in_channels:
            raise ValueError(f"liver must be (B, {self.in_channels}, Lz, Ly, Lx), got {tuple(liver.shape)}")
        if lesion_to_patient.shape != (n,) or lesion_to_patient.dtype != torch.long:
            raise ValueError(f"lesion_to_patient must be a long tensor of shape ({n},), got "
                             f"{lesion_to_patient.dtype} {tuple(lesion_to_patient.shape)}")
        if n and (int(lesion_to_patient.min()) < 0 or int(lesion_to_patient.max()) >= liver.shape[0]):
            raise ValueError(f"lesion_to_patient values must lie in [0, {liver.shape[0]})")
        return n
