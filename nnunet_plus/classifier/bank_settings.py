"""How the candidate bank turns candidates into classifier inputs: :class:`BankSettings` (crop, liver input,
intensity and matching options), stored in ``bank.json`` and in classifier checkpoints.

The crop rules themselves are documented in :mod:`nnunet_plus.classifier.crops`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Mapping, Sequence

from nnunet_plus.classifier.crops import (DEFAULT_CT_WINDOW, DEFAULT_LIVER_SHAPE, DEFAULT_ROI_CONTEXT,
                                          DEFAULT_ROI_MIN_MM, LARGE_LESION_RULES, LIVER_FIT_MODES, NORMALISATIONS,
                                          ROI_FOV_RULES, check_roi_context, default_roi_shape)
from nnunet_plus.classifier.resampling import PAD_MODES

__all__ = ["BankSettings"]


@dataclass(frozen=True)
class BankSettings:
    """How candidates are turned into classifier inputs (stored in ``bank.json``; a resumed build must match).

    Attributes
    ----------
    roi_shape : lesion ROI voxels (z, y, x); default (``None``) by ``roi_fov``: ``(16, 32, 32)`` for
        ``"lesion"``, ``(16, 64, 64)`` (the paper's 64x64x16 at the target spacing) for ``"fixed"``.
    liver_shape : liver input voxels (z, y, x).
    normalisation : ``"auto"`` (``"ct"`` for channels named CT in dataset.json, else ``"zscore"``), one of
        ``"ct"`` / ``"zscore"`` / ``"none"``, or one per channel.
    ct_window : HU window of ``"ct"`` normalisation, mapped to [-1, 1].
    large_lesion, margin : ``roi_fov="fixed"`` only: large-lesion rule of the ROI (``"zoom"`` / ``"crop"``)
        and its context margin.
    mask_order : 1 = soft (linear) lesion mask, 0 = binary (nearest).
    pad_mode : ``"constant"`` (the channel minimum after normalisation, i.e. air) or ``"edge"``.
    liver_mode, liver_margin : ``"fit"`` (aspect kept) or ``"stretch"``, and the liver box margin.
    criterion : candidate / reference matching criterion (``"overlap"`` or ``"dice:T"``).
    connectivity : seg2det connectivity (``"paper"``, 6, 18, 26).
    roi_fov : field-of-view rule of the lesion ROI (:mod:`nnunet_plus.classifier.crops`): ``"lesion"``
        (default: a cube of side ``max(roi_min_mm, roi_context x`` the lesion's longest bounding-box side in
        mm``)`` resampled to ``roi_shape``) or ``"fixed"`` (``roi_shape`` voxels at the target spacing).
    roi_context, roi_min_mm : ``roi_fov="lesion"`` only: field of view / lesion extent (>= 1, default 2) and
        the floor of the field of view in mm (default 32).

    Compatibility: settings stored before ``roi_fov`` existed have no ``roi_fov`` key and mean ``"fixed"``
    (:meth:`from_json`); ``"fixed"`` settings are stored in that same form (:meth:`to_json` leaves out the
    three lesion-rule keys), so old banks and checkpoints compare equal to new ``"fixed"`` ones. The options
    of the rule not chosen must keep their defaults (a ValueError otherwise: they would be ignored).
    """

    roi_shape: tuple[int, int, int] | None = None
    liver_shape: tuple[int, int, int] = DEFAULT_LIVER_SHAPE
    normalisation: str | tuple[str, ...] = "auto"
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW
    large_lesion: str = "zoom"
    margin: float = 0.25
    mask_order: int = 1
    pad_mode: str = "constant"
    liver_mode: str = "fit"
    liver_margin: float = 0.05
    criterion: str = "overlap"
    connectivity: str | int = "paper"
    roi_fov: str = "lesion"
    roi_context: float = DEFAULT_ROI_CONTEXT
    roi_min_mm: float = DEFAULT_ROI_MIN_MM

    #: the rule of settings stored without a ``roi_fov`` key (banks and checkpoints made before it existed)
    LEGACY_ROI_FOV: ClassVar[str] = "fixed"
    #: options of each rule, which must keep their defaults under the other rule
    RULE_OPTIONS: ClassVar[Mapping[str, tuple[str, ...]]] = {"lesion": ("roi_context", "roi_min_mm"),
                                                             "fixed": ("large_lesion", "margin")}

    def __post_init__(self) -> None:
        if self.roi_fov not in ROI_FOV_RULES:
            raise ValueError(f"roi_fov must be one of {ROI_FOV_RULES}, got {self.roi_fov!r}")
        roi_shape = default_roi_shape(self.roi_fov) if self.roi_shape is None else self.roi_shape
        object.__setattr__(self, "roi_shape", tuple(int(v) for v in roi_shape))
        object.__setattr__(self, "liver_shape", tuple(int(v) for v in self.liver_shape))
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        context, floor = check_roi_context(self.roi_context, self.roi_min_mm)
        object.__setattr__(self, "roi_context", context)
        object.__setattr__(self, "roi_min_mm", floor)
        if not isinstance(self.normalisation, str):
            object.__setattr__(self, "normalisation", tuple(str(v) for v in self.normalisation))
        for name, shape in (("roi_shape", self.roi_shape), ("liver_shape", self.liver_shape)):
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(f"{name} must be three positive integers (z, y, x), got {shape}")
        schemes = (self.normalisation,) if isinstance(self.normalisation, str) else self.normalisation
        unknown = sorted(set(schemes) - set(NORMALISATIONS) - {"auto"})
        if unknown or (len(schemes) > 1 and "auto" in schemes):
            raise ValueError(f"normalisation must be 'auto' or per channel one of {NORMALISATIONS}, "
                             f"got {self.normalisation!r}")
        for name, value, allowed in (("large_lesion", self.large_lesion, LARGE_LESION_RULES),
                                     ("pad_mode", self.pad_mode, PAD_MODES),
                                     ("liver_mode", self.liver_mode, LIVER_FIT_MODES),
                                     ("mask_order", self.mask_order, (0, 1))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.margin < 0 or self.liver_margin < 0:
            raise ValueError("margin and liver_margin must be >= 0")
        other = "fixed" if self.roi_fov == "lesion" else "lesion"
        defaults = {f.name: f.default for f in fields(self)}
        changed = [f"{name}={getattr(self, name)!r}" for name in self.RULE_OPTIONS[other]
                   if getattr(self, name) != defaults[name]]
        if changed:
            verb = "are" if len(changed) > 1 else "is"
            raise ValueError(f"{', '.join(changed)} {verb} only used by roi_fov={other!r} and would be ignored with "
                             f"roi_fov={self.roi_fov!r}; keep the default or choose roi_fov={other!r}")

    def crop_options(self) -> dict:
        """The lesion-ROI keyword arguments of :func:`~nnunet_plus.classifier.crops.candidate_rois`."""
        return {"roi_shape": self.roi_shape, "roi_fov": self.roi_fov, "roi_context": self.roi_context,
                "roi_min_mm": self.roi_min_mm, "large_lesion": self.large_lesion, "margin": self.margin,
                "pad_mode": self.pad_mode, "mask_order": self.mask_order}

    def schemes(self, num_channels: int, channel_names: Sequence[str] | None = None) -> tuple[str, ...]:
        """Per-channel normalisation; ``"auto"``: ``"ct"`` for channels named CT (or unnamed), else zscore."""
        if self.normalisation == "auto":
            if channel_names is None:
                return ("ct",) * num_channels
            return tuple("ct" if str(n).strip().lower() == "ct" else "zscore" for n in channel_names)
        if isinstance(self.normalisation, str):
            return (self.normalisation,) * num_channels
        if len(self.normalisation) != num_channels:
            raise ValueError(f"{len(self.normalisation)} normalisation schemes for {num_channels} channels")
        return self.normalisation

    def to_json(self) -> dict:
        """A JSON-ready dict; ``"fixed"`` settings leave out ``roi_fov`` and the lesion rule's options (the form
        stored before they existed). Read it back with :meth:`from_json` (``BankSettings(**d)`` would take the
        ``"lesion"`` default)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if self.roi_fov == self.LEGACY_ROI_FOV:
            for key in ("roi_fov", *self.RULE_OPTIONS["lesion"]):
                del out[key]
        return out

    @classmethod
    def from_json(cls, block: Mapping) -> "BankSettings":
        """Settings from :meth:`to_json`'s dict (unknown keys ignored); no ``roi_fov`` key means ``"fixed"``."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in block.items() if k in known}
        values.setdefault("roi_fov", cls.LEGACY_ROI_FOV)
        return cls(**values)
