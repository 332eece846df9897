"""The PLUS network: lesion encoder E^S + liver encoder E^H -> HDA -> prior fusion (GPR) -> class head.

Inputs of one batch (a set of ``B`` patients with ``N`` lesion candidates in all; ``N`` may be 0):

* ``lesion_crops`` ``(N, in_channels + 1, Dz, Dy, Dx)``: every image channel of the lesion ROI plus the
  candidate's mask (in [0, 1]) as the last channel (paper ROI: 64x64x16 voxels, ``Dz, Dy, Dx = 16, 64, 64``).
  The paper feeds ``I * M_s`` to E^S; we give the mask as a channel instead, so the encoder sees the
  lesion border and its surroundings and can still learn to mask.
* ``priors`` ``(N, C)``: nnU-Net's prior ``P`` per candidate, e.g. the mean softmax of each of the ``C``
  lesion classes over the candidate's voxels (values in [0, 1], rows summing to at most 1).
* ``liver`` ``(B, in_channels, Lz, Ly, Lx)``: each patient's image masked to the liver (``I * M_H``),
  cropped and resampled to a fixed shape (e.g. ``32 x 64 x 64``, giving a ``4 x 4 x 4`` liver map).
* ``lesion_to_patient`` ``(N,)`` long: the patient (row of ``liver``) of every candidate.

Output: logits ``(N, C + 1)``; columns ``0..C-1`` are the lesion classes in the order of ``priors`` (the
schema's ``lesions`` order), the last column is "not a lesion" (a false-positive candidate).

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
  the loss also needs ``patient_malignant`` and ``patient_tumor`` (0/1, from the reference, not from the
  candidates: a tumour patient whose lesions were all missed by nnU-Net still has label 1).
* Training step: ``logits = model(crops, priors, liver, index)`` under autocast, then
  ``plus_loss(logits, targets, index, patient_malignant, patient_tumor, num_patients=B, malignant_classes=...,
  benign_classes=..., class_weights=inverse_frequency_weights(train_counts))``; for ``fusion="distill"``
  (``model.needs_prior_target``) add ``distill_targets=prior_distribution(priors)`` and
  ``distill_weight=DEFAULT_DISTILL_WEIGHT``.
* Inference: ``softmax(logits)``; a candidate is kept as a lesion unless "not a lesion" wins; its type is the
  arg-max over the first ``C`` columns; the patient's malignant / tumour probabilities are the maxima over
  its candidates of the summed malignant / (malignant + benign) columns, as in the loss.
* Each lesion's logits depend only on its own crop, prior and its patient's liver (instance norm, per-lesion
  attention), so results do not depend on how candidates are batched.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from nnunet_plus.classifier.encoders import DEFAULT_STEM_STRIDE, ResNetEncoder3d, encoder_preset
from nnunet_plus.classifier.fusion import FUSION_MODES, build_fusion
from nnunet_plus.classifier.hda import HierarchicalDualAttention


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
        self.not_lesion_index = self.num_lesion_classes
        self.fusion_mode = fusion
        encoder_kwargs = {"stem_stride": stem_stride, "norm": norm, **arch}
        self.lesion_encoder = ResNetEncoder3d(self.in_channels + 1, **encoder_kwargs)  # E^S
        self.liver_encoder = ResNetEncoder3d(self.in_channels, **encoder_kwargs)  # E^H
        self.dim = self.lesion_encoder.out_channels
        self.hda = HierarchicalDualAttention(self.dim, num_scales=hda_scales, num_heads=num_heads, dropout=dropout)
        self.fusion = build_fusion(fusion, self.dim, self.num_classes, num_heads=num_heads, dropout=dropout)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.dim, self.num_classes))

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

    def forward(self, lesion_crops: torch.Tensor, priors: torch.Tensor, liver: torch.Tensor,
                lesion_to_patient: torch.Tensor) -> torch.Tensor:
        """Classify ``N`` candidates of ``B`` patients; returns logits ``(N, C + 1)`` (see the module doc)."""
        n = self._check_inputs(lesion_crops, priors, liver, lesion_to_patient)
        if n == 0:  # still a graph node of the head, so a loss on it can call backward()
            return self.head(lesion_crops.new_zeros((0, self.dim)))
        # encode only the livers of patients that have candidates
        patients, local_index = torch.unique(lesion_to_patient, return_inverse=True)
        liver_map = self.liver_encoder(liver.index_select(0, patients))
        lesion_map = self.lesion_encoder(lesion_crops)
        features = self.hda(lesion_map, liver_map, local_index)
        features = self.fusion(features, prior_distribution(priors))
        return self.head(features)

    def _check_inputs(self, lesion_crops: torch.Tensor, priors: torch.Tensor, liver: torch.Tensor,
                      lesion_to_patient: torch.Tensor) -> int:
        if lesion_crops.ndim != 5 or lesion_crops.shape[1] != self.in_channels + 1:
            raise ValueError(f"lesion_crops must be (N, {self.in_channels + 1}, Dz, Dy, Dx) (image channels + mask), "
                             f"got {tuple(lesion_crops.shape)}")
        n = lesion_crops.shape[0]
        if priors.shape != (n, self.num_lesion_classes):
            raise ValueError(f"priors must be ({n}, {self.num_lesion_classes}), got {tuple(priors.shape)}")
        if liver.ndim != 5 or liver.shape[1] != self.in_channels:
            raise ValueError(f"liver must be (B, {self.in_channels}, Lz, Ly, Lx), got {tuple(liver.shape)}")
        if lesion_to_patient.shape != (n,) or lesion_to_patient.dtype != torch.long:
            raise ValueError(f"lesion_to_patient must be a long tensor of shape ({n},), got "
                             f"{lesion_to_patient.dtype} {tuple(lesion_to_patient.shape)}")
        if n and (int(lesion_to_patient.min()) < 0 or int(lesion_to_patient.max()) >= liver.shape[0]):
            raise ValueError(f"lesion_to_patient values must lie in [0, {liver.shape[0]})")
        return n
