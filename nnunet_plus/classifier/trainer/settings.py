"""The training options of a PLUS classifier fold (stored in every checkpoint; a resumed run must use the same)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Mapping

from nnunet_plus.classifier.data import Augmentation
from nnunet_plus.classifier.operating_point import OBJECTIVES
from nnunet_plus.classifier.warm_start import DEFAULT_L2

__all__ = ["BEST_METRICS", "TrainerSettings"]

#: the validation metrics that can choose checkpoint_best
BEST_METRICS = ("lesion_f1", "patient_f1")


@dataclass(frozen=True)
class TrainerSettings:
    """Training options (stored in every checkpoint; a resumed run must use the same).

    Attributes
    ----------
    epochs, batch_patients : epochs; patients per batch (paper: 100, 2).
    learning_rate, weight_decay : AdamW (paper: 1e-4, 0.05); cosine annealing over ``epochs``.
    correction_lr_factor : the image head and the description embedding learn this many times faster (ours: they
        start from zero and are small; 1 = the paper's single learning rate).
    warm_start_l2 : L2 penalty of the warm start that fits the network's linear description term before the first
        epoch (:mod:`nnunet_plus.classifier.warm_start`); 0 = no warm start (the paper's recipe).
    alpha, beta, gamma : loss weights of L_L and L_P (paper 0.5, 0.3) and the focal exponent.
    class_weight_power : z_c = count_c ** -power (1 = inverse frequency, 0 = uniform).
    preset, fusion, dropout : the network (:class:`~nnunet_plus.classifier.model.PLUSClassifier`).
    seed : seeds the network initialisation, the epoch order and the augmentation.
    flip_p, intensity_scale, intensity_shift : crop augmentation (:class:`~nnunet_plus.classifier.data.Augmentation`).
    best_metric : ``"lesion_f1"`` (default) or ``"patient_f1"`` for checkpoint_best (scored with the network's own
        answer, :data:`~nnunet_plus.classifier.rule_scores.NETWORK_RULE`).
    objective : what the operating point maximises on the validation cases (``"lesion_f1"``, ``"malignant_f1"``,
        ``"benign_f1"``, ``"patient_f1"``).
    save_every : write checkpoint_latest every this many epochs.
    """

    epochs: int = 100
    batch_patients: int = 2
    learning_rate: float = 1e-4
    correction_lr_factor: float = 10.0
    warm_start_l2: float = DEFAULT_L2
    weight_decay: float = 0.05
    alpha: float = 0.5
    beta: float = 0.3
    gamma: float = 2.0
    class_weight_power: float = 1.0
    preset: str = "paper"
    fusion: str = "gpr"
    dropout: float = 0.0
    seed: int = 12345
    flip_p: float = 0.5
    intensity_scale: float = 0.05
    intensity_shift: float = 0.02
    best_metric: str = "lesion_f1"
    objective: str = "lesion_f1"
    save_every: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_patients < 1 or self.save_every < 1:
            raise ValueError("epochs, batch_patients and save_every must be >= 1")
        if not self.learning_rate > 0 or not self.correction_lr_factor > 0 or not self.weight_decay >= 0 \
                or not self.warm_start_l2 >= 0:
            raise ValueError(f"need learning_rate > 0, correction_lr_factor > 0, weight_decay >= 0 and warm_start_l2 "
                             f">= 0, got {self.learning_rate}, {self.correction_lr_factor}, {self.weight_decay}, "
                             f"{self.warm_start_l2}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.best_metric not in BEST_METRICS:
            raise ValueError(f"best_metric must be one of {BEST_METRICS}, got {self.best_metric!r}")
        if not 0 <= self.class_weight_power <= 2:
            raise ValueError(f"class_weight_power must be in [0, 2] (1 = inverse frequency), got "
                             f"{self.class_weight_power}")
        Augmentation(self.flip_p, self.intensity_scale, self.intensity_shift)

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(self.flip_p, self.intensity_scale, self.intensity_shift)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, block: Mapping) -> "TrainerSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in block.items() if k in known})
