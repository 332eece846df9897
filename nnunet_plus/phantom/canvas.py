"""Painter's-algorithm compositing of tissues with partial-volume blending and a record of who owns each voxel."""
from __future__ import annotations

import numpy as np

from nnunet_plus.phantom.shapes import Box

#: Owner value of voxels shared by several tissues (partial volume).
MIXED = -1


class Canvas:
    """An HU image built by painting tissues in order; later tissues cover earlier ones.

    ``paint`` blends ``value`` in with the voxel fraction ``occ`` (partial volume). A voxel fully covered
    (occ >= 0.999) by a tissue belongs to it; a partially covered one becomes :data:`MIXED`.
    ``tissue_masks()`` gives the voxels that show one tissue only, for measuring per-tissue HU statistics.
    """

    def __init__(self, shape: tuple[int, int, int], background_hu: float, background: str = "air"):
        self.image = np.full(shape, background_hu, dtype=np.float32)
        self.owner = np.zeros(shape, dtype=np.int16)
        self.names: list[str] = [background]

    def tissue_id(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)

    def paint(self, name: str, occ: np.ndarray, value: float | np.ndarray, box: Box | None = None) -> None:
        """Blend ``value`` (HU, scalar or array shaped like ``occ``) into the image with weights ``occ``."""
        box = box or (slice(None),) * 3
        image = self.image[box]
        image += occ * (np.asarray(value, dtype=np.float32) - image)
        owner = self.owner[box]
        owner[(occ > 1e-3) & (occ < 0.999)] = MIXED
        owner[occ >= 0.999] = self.tissue_id(name)

    def tissue_masks(self) -> dict[str, np.ndarray]:
        """``{name: mask}`` of the voxels made of that tissue only (no partial volume), for every painted
        tissue that still owns voxels."""
        masks = {name: self.owner == i for i, name in enumerate(self.names)}
        return {name: mask for name, mask in masks.items() if mask.any()}
