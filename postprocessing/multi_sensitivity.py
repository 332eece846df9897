"""Multi-sensitivity labelling (cascaded paper, eq. 3): argmax after scaling the lesion channels by f.

For every voxel the softmax channels split into lesion channels L and the others N (background, liver,
organs). Scaling L by a positive f never changes which lesion channel is largest, so one pass over the
probabilities gives, per voxel, ``max_N``/``argmax_N`` and ``max_L``/``argmax_L``; each factor then only
needs one comparison::

    lesion wins  <=>  f * max_L > max_N,  or  f * max_L == max_N and argmax_L < argmax_N

(the equality case is ``numpy.argmax``'s rule: ties go to the lowest label index). ``f * max_L`` is rounded
to float32, exactly as when the scaled channels are materialised in float32, so ``f = 1`` reproduces
nnU-Net's argmax bit for bit and raising ``f`` never removes a lesion voxel (rounding is monotone). By that
monotonicity a factor between the smallest and the largest one can only differ from the smallest one where
the largest one makes a lesion voxel, so only those voxels are compared for the factors in between.
"""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

__all__ = ["multi_sensitivity_labels", "is_torch_tensor"]


def is_torch_tensor(value) -> bool:
    """True for a torch tensor, without importing torch (a tensor exists only if torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _validate(shape: tuple[int, ...], lesion_labels: Sequence[int], factors: Sequence[float],
              chunk_slices: int) -> tuple[list[int], list[int], list[float]]:
    if len(shape) != 4:
        raise ValueError(f"probabilities must have shape (C, Z, Y, X), got shape {tuple(shape)}")
    num_channels = shape[0]
    if num_channels > 256:
        raise ValueError(f"at most 256 channels fit the uint8 label maps, got {num_channels}")
    lesions = [int(v) for v in lesion_labels]
    if not lesions:
        raise ValueError("lesion_labels is empty; give the lesion label values (= softmax channel indices)")
    if len(set(lesions)) != len(lesions):
        raise ValueError(f"lesion_labels lists a label twice: {lesions}")
    bad = [v for v in lesions if not 0 <= v < num_channels]
    if bad:
        raise ValueError(f"lesion label(s) {bad} are not channels of a {num_channels}-channel softmax")
    others = [c for c in range(num_channels) if c not in set(lesions)]
    if not others:
        raise ValueError("every channel is a lesion channel; at least background must not be")
    factor_list = [float(f) for f in factors]
    if not factor_list or any(not (np.isfinite(f) and f > 0) for f in factor_list):
        raise ValueError(f"factors must be a non-empty list of positive finite numbers, got {list(factors)}")
    if int(chunk_slices) < 1:
        raise ValueError(f"chunk_slices must be >= 1, got {chunk_slices}")
    return sorted(lesions), others, factor_list


def multi_sensitivity_labels(probabilities, lesion_labels: Sequence[int], factors: Sequence[float], *,
                             chunk_slices: int = 8):
    """Label maps at several lesion sensitivities, in one pass over the probabilities.

    Parameters
    ----------
    probabilities : (C, Z, Y, X) numpy array (float16/float32/float64) or torch tensor (any device);
        softmax output, channel index == label value. Not modified.
    lesion_labels : label values of the lesion channels (multiplied by each factor).
    factors : k positive sensitivity factors (``1`` is nnU-Net's own segmentation).
    chunk_slices : number of Z slices processed at once (bounds the extra memory).

    Returns
    -------
    (k, Z, Y, X) uint8 label maps, map i being ``argmax`` with the lesion channels scaled by ``factors[i]``;
    a numpy array for numpy input, a torch tensor on the input's device for torch input.
    """
    if is_torch_tensor(probabilities):
        lesions, others, factor_list = _validate(tuple(probabilities.shape), lesion_labels, factors,
                                                 chunk_slices)
        return _labels_torch(probabilities, lesions, others, factor_list, int(chunk_slices))
    probabilities = np.asarray(probabilities)
    lesions, others, factor_list = _validate(probabilities.shape, lesion_labels, factors, chunk_slices)
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise ValueError(f"probabilities must be floating point, got dtype {probabilities.dtype}")
    return _labels_numpy(probabilities, lesions, others, factor_list, int(chunk_slices))


# ---- numpy ---------------------------------------------------------------------------------------------
def _max_argmax_numpy(chunk: np.ndarray, channels: list[int], best: np.ndarray, arg: np.ndarray,
                      mask: np.ndarray, scratch: np.ndarray) -> None:
    """Max and first argmax over ``channels`` of ``chunk`` (C, z, Y, X), written into the buffers."""
    np.copyto(best, chunk[channels[0]])
    arg.fill(channels[0])
    for c in channels[1:]:
        values = chunk[c]
        if values.dtype != best.dtype:
            np.copyto(scratch, values)
            values = scratch
        np.greater(values, best, out=mask)          # strict: an equal later channel never wins
        np.maximum(best, values, out=best)
        np.copyto(arg, np.uint8(c), where=mask)


def _labels_numpy(probabilities: np.ndarray, lesions: list[int], others: list[int], factors: list[float],
                  chunk_slices: int) -> np.ndarray:
    depth = probabilities.shape[1]
    spatial = probabilities.shape[1:]
    out = np.empty((len(factors),) + spatial, dtype=np.uint8)
    work = np.float64 if probabilities.dtype == np.float64 else np.float32
    # the smallest and the largest factor are evaluated everywhere; a factor in between can only differ
    # from the smallest one where the largest one turns a voxel into lesion (monotonicity), so it is
    # evaluated there only
    by_factor = sorted(range(len(factors)), key=lambda i: factors[i])
    lowest, highest, middle = by_factor[0], by_factor[-1], by_factor[1:-1]
    buf_shape = (min(chunk_slices, depth),) + spatial[1:]
    max_n, max_l, scratch = (np.empty(buf_shape, dtype=work) for _ in range(3))
    arg_n, arg_l, step = (np.empty(buf_shape, dtype=np.uint8) for _ in range(3))
    mask, wins_low = (np.empty(buf_shape, dtype=bool) for _ in range(2))
    above = np.asarray(np.inf, dtype=work)
    for z0 in range(0, depth, chunk_slices):
        n = min(chunk_slices, depth - z0)
        chunk = probabilities[:, z0:z0 + n]
        mn, ml, sc = max_n[:n], max_l[:n], scratch[:n]
        an, al, st, mk, low = arg_n[:n], arg_l[:n], step[:n], mask[:n], wins_low[:n]
        _max_argmax_numpy(chunk, others, mn, an, mk, sc)
        _max_argmax_numpy(chunk, lesions, ml, al, mk, sc)
        # lesion wins iff f * max_L >= threshold: threshold = max_N where a tie goes to the lesion (lower
        # label index), else the next float above max_N (strict comparison); written over max_N
        np.nextafter(mn, above, out=sc)
        np.greater_equal(al, an, out=mk)
        np.copyto(mn, sc, where=mk)
        np.subtract(al, an, out=st)                 # uint8 wrap-around: an + st == al (mod 256)
        for i, wins in ((lowest, low), (highest, mk))[:min(len(factors), 2)]:
            factor = factors[i]
            scaled = ml if factor == 1.0 else np.multiply(ml, work(factor), out=sc)
            np.greater_equal(scaled, mn, out=wins)
            target = out[i, z0:z0 + n]
            np.multiply(wins, st, out=target)
            np.add(target, an, out=target)
        if middle:
            np.greater(mk, low, out=mk)             # lesion at the highest factor only
            where = np.flatnonzero(mk)
            ml_at, th_at = ml.reshape(-1)[where], mn.reshape(-1)[where]
            al_at, an_at = al.reshape(-1)[where], an.reshape(-1)[where]
            for i in middle:
                target = out[i, z0:z0 + n]
                np.copyto(target, out[lowest, z0:z0 + n])
                target.reshape(-1)[where] = np.where(ml_at * work(factors[i]) >= th_at, al_at, an_at)
    return out


# ---- torch ---------------------------------------------------------------------------------------------
def _max_argmax_torch(chunk, channels: list[int], best, arg, mask, scratch) -> None:
    import torch

    best.copy_(chunk[channels[0]])
    arg.fill_(channels[0])
    for c in channels[1:]:
        values = chunk[c]
        if values.dtype != best.dtype:
            scratch.copy_(values)
            values = scratch
        torch.gt(values, best, out=mask)
        torch.maximum(best, values, out=best)
        arg.masked_fill_(mask, c)


def _labels_torch(probabilities, lesions: list[int], others: list[int], factors: list[float],
                  chunk_slices: int):
    import torch

    if not probabilities.is_floating_point():
        raise ValueError(f"probabilities must be floating point, got dtype {probabilities.dtype}")
    device = probabilities.device
    depth = probabilities.shape[1]
    spatial = tuple(probabilities.shape[1:])
    work = torch.float64 if probabilities.dtype == torch.float64 else torch.float32
    out = torch.empty((len(factors),) + spatial, dtype=torch.uint8, device=device)
    buf_shape = (min(chunk_slices, depth),) + spatial[1:]
    max_n, max_l, scratch = (torch.empty(buf_shape, dtype=work, device=device) for _ in range(3))
    arg_n, arg_l = (torch.empty(buf_shape, dtype=torch.uint8, device=device) for _ in range(2))
    mask = torch.empty(buf_shape, dtype=torch.bool, device=device)
    above = torch.tensor(float("inf"), dtype=work, device=device)
    with torch.no_grad():
        for z0 in range(0, depth, chunk_slices):
            n = min(chunk_slices, depth - z0)
            chunk = probabilities[:, z0:z0 + n]
            mn, ml, sc = max_n[:n], max_l[:n], scratch[:n]
            an, al, mk = arg_n[:n], arg_l[:n], mask[:n]
            _max_argmax_torch(chunk, others, mn, an, mk, sc)
            _max_argmax_torch(chunk, lesions, ml, al, mk, sc)
            torch.nextafter(mn, above.expand_as(mn), out=sc)
            torch.ge(al, an, out=mk)
            torch.where(mk, sc, mn, out=mn)
            for i, factor in enumerate(factors):
                scaled = ml if factor == 1.0 else torch.mul(ml, factor, out=sc)
                torch.ge(scaled, mn, out=mk)
                torch.where(mk, al, an, out=out[i, z0:z0 + n])
    return out
