"""Lesion-shuffle augmentation (cascaded paper §III-B, eq. 9): move lesions within the same patient's liver.

``I_patch, Mask_patch <- shuffle(Det, I)``: with the exact lesion masks and the liver mask, a lesion is
transplanted into lesion-free liver of the same patient, and (the paper's "shuffled negative") the place it
left is filled with normal liver texture. The paper shuffles the reference lesions and nnU-Net's false
positives and negatives (``Det_FP``, ``Det_FN``), which makes hard training cases without more stage-one
training. Here one shuffle makes one whole shuffled copy of a case, which the candidate bank then analyses
like any other case (:func:`nnunet_plus.classifier.bank.build_candidate_bank`, ``lesion_shuffles``).

Conventions (stated once):

- An **object** is one id of the ``objects`` map: the default (:func:`shuffle_objects`) is a 26-connected
  component of (reference lesions OR nnU-Net's lesion voxels at a sensitivity), so a reference lesion moves
  with nnU-Net's response to it, and nnU-Net's false candidates and misses move too.
- Its **footprint** is the object plus the free liver voxels within ``margin`` face-neighbour steps of it (a
  voxel within reach of two objects goes to the lower id: footprints never overlap): the lesion's edge moves
  with it.
- **Moving** is an integer voxel translation (no rotation, flip or resampling), the same for the image (every
  channel), the reference labels and nnU-Net's softmax (every channel): the voxel values at the new place are
  exactly the old ones.
- **Where**: the whole footprint at the new place lies in the liver region, on voxels that are neither a
  reference lesion, nor an object, nor any footprint (old or newly placed), nor within ``gap`` voxels
  (chessboard) of one: a moved lesion never touches or merges with another. Positions are drawn uniformly at
  random (``max_tries`` random anchors inside the free liver, then an exact search over all positions, so
  "no place" means there is none). Objects are placed largest first. An object that is not entirely inside
  the liver region, or that finds no place, stays where it is.
- **The vacated place** is filled by a *swap*: it receives the image, labels and softmax of the lesion-free
  liver patch the lesion now covers (the same footprint shape), i.e. real liver texture of the same patient
  and nnU-Net's own (lesion-free) response to it. The original copy therefore does not remain as a lesion;
  the seam is where real tissue meets real tissue (no synthetic in-painting, no noise model).
- **No leak**: the reference only decides *which* voxels move and *where they may go*. nnU-Net's softmax is
  moved, never written from the labels: a lesion nnU-Net missed stays missed (it moves as an image + label
  with nnU-Net's liver-like softmax), and the prior of a transplanted candidate is nnU-Net's transplanted
  softmax. The softmax is nnU-Net's response to the lesion in its old context (stage one is not re-run).
- Inputs are never modified; every array of the result is a new array.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage, signal

from nnunet_plus.postprocessing.multi_sensitivity import multi_sensitivity_labels

__all__ = ["SHUFFLE_SUFFIX", "LesionShuffle", "shuffle_case", "shuffle_lesions", "shuffle_objects", "shuffled_case_id"]

_CUBE = np.ones((3, 3, 3), dtype=bool)
_FACES = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class LesionShuffle:
    """One shuffled copy of a case (:func:`shuffle_lesions`).

    Attributes
    ----------
    image : (C, Z, Y, X) the shuffled image, dtype of the input.
    reference : (Z, Y, X) the shuffled reference label map, dtype of the input.
    probabilities : (K, Z, Y, X) the shuffled softmax, dtype of the input.
    object_ids : (n,) int64 the ids of the objects considered (ascending).
    displacements : (n, 3) int64 voxel translation (z, y, x) of each object, zeros for one that stayed.
    moved : (n,) bool, whether the object moved.
    """

    image: np.ndarray
    reference: np.ndarray
    probabilities: np.ndarray
    object_ids: np.ndarray
    displacements: np.ndarray
    moved: np.ndarray

    @property
    def num_moved(self) -> int:
        """How many objects moved."""
        return int(self.moved.sum())

    @property
    def num_objects(self) -> int:
        """How many objects there were."""
        return int(self.object_ids.size)


def _check_lesion_labels(lesion_labels: Sequence[int], num_channels: int | None) -> list[int]:
    labels = [int(v) for v in lesion_labels]
    if not labels:
        raise ValueError("lesion_labels must name at least one lesion label")
    if min(labels) < 1 or (num_channels is not None and max(labels) >= num_channels):
        top = "K-1" if num_channels is None else num_channels - 1
        raise ValueError(f"lesion_labels {labels} must be label values 1..{top} (softmax channel index == label "
                         "value)")
    return labels


def _check_mask(name: str, mask, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name} must have the image's spatial shape (Z, Y, X) = {shape}, got {mask.shape}")
    if mask.dtype != bool:
        if not (np.issubdtype(mask.dtype, np.integer) and (mask.size == 0 or (mask.min() >= 0 and mask.max() <= 1))):
            raise ValueError(f"{name} must be a boolean mask (or 0/1 integers), got dtype {mask.dtype}")
        mask = mask.astype(bool)
    return mask


def shuffle_objects(reference: np.ndarray, probabilities: np.ndarray, *, lesion_labels: Sequence[int],
                    sensitivity: float = 1.0) -> np.ndarray:
    """The objects a lesion shuffle moves: reference lesions and nnU-Net's lesions, as one id map.

    Parameters
    ----------
    reference : (Z, Y, X) integer reference label map.
    probabilities : (K, Z, Y, X) nnU-Net softmax, channel index == label value.
    lesion_labels : the lesion label values.
    sensitivity : nnU-Net's lesion voxels are the argmax with the lesion channels multiplied by this factor
        (cascaded paper eq. 3); use the schema's highest sensitivity so that every candidate is covered.

    Returns
    -------
    (Z, Y, X) int32 object ids 1..n (0 = none): the 26-connected components of (reference lesion voxels OR
    nnU-Net lesion voxels), numbered in raster order of their first voxel.
    """
    reference = np.asarray(reference)
    probabilities = np.asarray(probabilities)
    if reference.ndim != 3:
        raise ValueError(f"reference must be (Z, Y, X), got shape {reference.shape}")
    if probabilities.ndim != 4 or probabilities.shape[1:] != reference.shape:
        raise ValueError(f"probabilities must be (K, Z, Y, X) with (Z, Y, X) = {reference.shape}, got shape "
                         f"{probabilities.shape}")
    if not sensitivity > 0:
        raise ValueError(f"sensitivity must be positive, got {sensitivity}")
    labels = _check_lesion_labels(lesion_labels, probabilities.shape[0])
    predicted = multi_sensitivity_labels(probabilities, labels, (float(sensitivity),))[0]
    union = np.isin(reference, labels) | np.isin(predicted, labels)
    objects, _ = ndimage.label(union, structure=_CUBE)
    return objects.astype(np.int32)


def _footprints(objects: np.ndarray, liver: np.ndarray, margin: int) -> np.ndarray:
    """Object ids grown by ``margin`` face-neighbour steps into free liver voxels (a voxel within reach of two
    objects goes to the lower id), computed object by object in its bounding box (no full-volume transform)."""
    grown = objects.copy()
    if margin <= 0:
        return grown
    for i, box in enumerate(ndimage.find_objects(objects), start=1):
        if box is None:
            continue
        window = tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, objects.shape))
        rim = ndimage.binary_dilation(objects[window] == i, structure=_FACES, iterations=margin)
        rim &= (grown[window] == 0) & liver[window]
        grown[window][rim] = i
    return grown


def _fits(coords: np.ndarray, allowed: np.ndarray) -> bool:
    if coords.min() < 0 or np.any(coords.max(axis=0) >= allowed.shape):
        return False
    return bool(allowed[coords[:, 0], coords[:, 1], coords[:, 2]].all())


def _exact_origins(relative: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Every origin (bbox corner) where the footprint lies wholly on ``allowed``; (m, 3) int64."""
    none = np.zeros((0, 3), dtype=np.int64)
    if allowed.sum() < len(relative):
        return none
    low, high = [], []
    for axis in range(3):
        present = np.flatnonzero(allowed.any(axis=tuple(a for a in range(3) if a != axis)))
        low.append(present[0])
        high.append(present[-1] + 1)
    low, high = np.array(low, dtype=np.int64), np.array(high, dtype=np.int64)
    size = relative.max(axis=0) + 1
    if np.any(high - low < size):
        return none
    blocked = (~allowed[low[0]:high[0], low[1]:high[1], low[2]:high[2]]).astype(np.float32)
    kernel = np.zeros(tuple(size), dtype=np.float32)
    kernel[relative[:, 0], relative[:, 1], relative[:, 2]] = 1.0
    # correlation of the blocked voxels with the footprint = convolution with the flipped footprint
    hits = signal.fftconvolve(blocked, kernel[::-1, ::-1, ::-1], mode="valid")
    return np.argwhere(hits < 0.5).astype(np.int64) + low


def _check_arrays(image, reference, probabilities, liver_region, objects
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(image, reference, probabilities, liver, objects)`` as arrays of consistent shapes (ValueError if not);
    ``liver`` bool, ``objects`` int64 (Z, Y, X)."""
    image = np.asarray(image)
    reference = np.asarray(reference)
    probabilities = np.asarray(probabilities)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {image.shape}")
    shape = image.shape[1:]
    if reference.shape != shape:
        raise ValueError(f"reference must have the image's spatial shape (Z, Y, X) = {shape}, got {reference.shape}")
    if not np.issubdtype(reference.dtype, np.integer):
        raise ValueError(f"reference must hold integer labels, got dtype {reference.dtype}")
    if probabilities.ndim != 4 or probabilities.shape[1:] != shape:
        raise ValueError(f"probabilities must be (K, Z, Y, X) with (Z, Y, X) = {shape}, got shape "
                         f"{probabilities.shape}")
    liver = _check_mask("liver_region", liver_region, shape)
    objects = np.asarray(objects)
    if objects.shape != shape:
        raise ValueError(f"objects must have the image's spatial shape (Z, Y, X) = {shape}, got {objects.shape}")
    if not (np.issubdtype(objects.dtype, np.integer) or objects.dtype == bool):
        raise ValueError(f"objects must hold integer ids, got dtype {objects.dtype}")
    if objects.size and objects.min() < 0:
        raise ValueError("objects must hold non-negative ids (0 = no object)")
    return image, reference, probabilities, liver, objects.astype(np.int64)


def _check_options(rng, margin: int, gap: int, max_tries: int) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got "
                         f"{type(rng).__name__}")
    for name, value, low in (("margin", margin, 0), ("gap", gap, 0), ("max_tries", max_tries, 0)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _free_liver(liver: np.ndarray, occupied: np.ndarray, gap: int) -> np.ndarray:
    """(Z, Y, X) bool: liver voxels farther than ``gap`` voxels (chessboard) from every ``occupied`` voxel."""
    blocked = ndimage.binary_dilation(occupied, structure=_CUBE, iterations=int(gap)) if gap else occupied
    return liver & ~blocked


def _random_origin(relative: np.ndarray, allowed: np.ndarray, rng: np.random.Generator,
                   max_tries: int) -> np.ndarray | None:
    """A random origin (bbox corner, (3,) int64) where the footprint ``relative`` ((m, 3) voxel offsets from
    its corner) lies wholly on ``allowed``: ``max_tries`` random anchors, then the exact search; None if none."""
    anchor = relative[np.argmin(((relative - relative.mean(axis=0)) ** 2).sum(axis=1))]
    free = np.flatnonzero(allowed)
    if not free.size:
        return None
    for flat in rng.choice(free, size=min(int(max_tries), free.size), replace=False):
        candidate = np.array(np.unravel_index(flat, allowed.shape), dtype=np.int64) - anchor
        if _fits(relative + candidate, allowed):
            return candidate
    origins = _exact_origins(relative, allowed)
    return origins[rng.integers(len(origins))] if len(origins) else None


def _swap(original: np.ndarray, shuffled: np.ndarray, source: np.ndarray, target: np.ndarray) -> None:
    """In ``shuffled``, the voxels ``source`` ((m, 3) indices, every leading channel) get the values of
    ``original`` at ``target`` and the other way round: the object moves, the liver patch fills its place."""
    s, t = (Ellipsis, *source.T), (Ellipsis, *target.T)
    shuffled[t] = original[s]
    shuffled[s] = original[t]


def _reserve(allowed: np.ndarray, target: np.ndarray, gap: int) -> None:
    """Remove the placed footprint ``target`` ((m, 3) indices) and its ``gap`` surroundings from ``allowed``."""
    placed = np.zeros(allowed.shape, dtype=bool)
    placed[tuple(target.T)] = True
    if gap:
        low = np.maximum(target.min(axis=0) - gap, 0)
        high = np.minimum(target.max(axis=0) + gap + 1, allowed.shape)
        window = tuple(slice(a, b) for a, b in zip(low, high))
        placed[window] = ndimage.binary_dilation(placed[window], structure=_CUBE, iterations=int(gap))
    allowed &= ~placed


def shuffle_lesions(image: np.ndarray, reference: np.ndarray, probabilities: np.ndarray, *,
                    liver_region: np.ndarray, objects: np.ndarray, lesion_labels: Sequence[int],
                    rng: np.random.Generator, margin: int = 1, gap: int = 1, max_tries: int = 100
                    ) -> LesionShuffle:
    """Make one shuffled copy of a case: every object moves to a random place in lesion-free liver.

    Parameters
    ----------
    image, reference, probabilities : (C, Z, Y, X) image (any dtype, HU for CT), (Z, Y, X) integer reference
        label map, (K, Z, Y, X) nnU-Net softmax in the image geometry.
    liver_region : (Z, Y, X) bool, the liver including its lesions; objects move only within it.
    objects : (Z, Y, X) non-negative integer object ids, 0 = none (:func:`shuffle_objects`). Voxels outside
        every object that nnU-Net calls a lesion may be chosen as "lesion-free": include nnU-Net's candidates.
    lesion_labels : the lesion label values (reference lesions are never a destination).
    rng : the random generator (the result is a function of its state).
    margin, gap : liver voxels around an object that move with it (its footprint), and free voxels
        (chessboard) kept between a moved footprint and any other lesion or footprint.
    max_tries : random anchors tried per object before the exact search over every position.

    Returns :class:`LesionShuffle` (new arrays; the inputs are not modified). ValueError on inconsistent
    shapes, non-integer ``reference`` / ``objects``, bad ``lesion_labels`` or options.
    """
    image, reference, probabilities, liver, objects = _check_arrays(image, reference, probabilities, liver_region,
                                                                    objects)
    labels = _check_lesion_labels(lesion_labels, probabilities.shape[0])
    _check_options(rng, margin, gap, max_tries)
    out_image, out_reference, out_probabilities = image.copy(), reference.copy(), probabilities.copy()
    ids = np.unique(objects[objects > 0])
    displacements = np.zeros((ids.size, 3), dtype=np.int64)
    moved = np.zeros(ids.size, dtype=bool)
    if ids.size == 0:
        return LesionShuffle(out_image, out_reference, out_probabilities, ids, displacements, moved)

    footprints = _footprints(objects, liver, int(margin))
    allowed = _free_liver(liver, (footprints > 0) | (objects > 0) | np.isin(reference, labels), gap)
    slices, object_slices = ndimage.find_objects(footprints), ndimage.find_objects(objects)
    sizes = np.bincount(footprints.ravel(), minlength=int(ids.max()) + 1)[ids]
    for i in sorted(range(ids.size), key=lambda i: (-sizes[i], ids[i])):  # largest first
        object_id = int(ids[i])
        object_box = object_slices[object_id - 1]
        if not liver[object_box][objects[object_box] == object_id].all():
            continue  # straddles the liver boundary: stays
        start = np.array([s.start for s in slices[object_id - 1]], dtype=np.int64)
        source = np.argwhere(footprints[slices[object_id - 1]] == object_id) + start
        origin = _random_origin(source - start, allowed, rng, max_tries)
        if origin is None:
            continue
        target = source - start + origin
        for original, shuffled in ((image, out_image), (reference, out_reference),
                                   (probabilities, out_probabilities)):
            _swap(original, shuffled, source, target)
        displacements[i] = origin - start
        moved[i] = True
        _reserve(allowed, target, gap)
    return LesionShuffle(out_image, out_reference, out_probabilities, ids, displacements, moved)


#: a shuffled copy of case ``X`` is the bank case ``X__shuffle<k>``, k = 1..K
SHUFFLE_SUFFIX = "__shuffle"


def shuffled_case_id(case_id: str, copy: int) -> str:
    """The bank case id of shuffled copy ``copy`` (1-based) of ``case_id``."""
    return f"{case_id}{SHUFFLE_SUFFIX}{int(copy)}"


def shuffle_case(image: np.ndarray, reference: np.ndarray, probabilities: np.ndarray, schema, *,
                 rng: np.random.Generator, margin: int = 1, gap: int = 1, max_tries: int = 100) -> LesionShuffle:
    """:func:`shuffle_lesions` with the schema's defaults.

    The objects are :func:`shuffle_objects` at the schema's highest sensitivity (so every candidate of the bank,
    which is taken at that sensitivity, is an object or part of one). The liver region is where the reference
    *and* nnU-Net's own label map (argmax, f=1) both say liver or lesion, plus the objects' voxels inside the
    reference liver: the liver patches swapped into vacated places are liver in both views, so the reference
    liver region never changes and nnU-Net's (the classifier's liver input) only where an object itself is
    not liver for nnU-Net. An object reaching outside the reference liver stays in place.

    Parameters
    ----------
    image, reference, probabilities : (C, Z, Y, X), (Z, Y, X), (K, Z, Y, X) as in :func:`shuffle_lesions`.
    schema : the dataset's :class:`~nnunet_plus.schema.LesionSchema`.
    rng, margin, gap, max_tries : as in :func:`shuffle_lesions`.
    """
    lesion_labels = list(schema.lesion_labels)
    reference = np.asarray(reference)
    objects = shuffle_objects(reference, probabilities, lesion_labels=lesion_labels,
                              sensitivity=max(schema.sensitivities))
    region_labels = schema.liver_region_labels
    nnunet_map = multi_sensitivity_labels(np.asarray(probabilities), lesion_labels, (1.0,))[0]
    reference_liver = np.isin(reference, region_labels)
    liver = reference_liver & (np.isin(nnunet_map, region_labels) | (objects > 0))
    return shuffle_lesions(image, reference, probabilities, liver_region=liver, objects=objects,
                           lesion_labels=lesion_labels, rng=rng, margin=margin, gap=gap, max_tries=max_tries)
