"""Pure array functions of the candidate bank: intensity, lesion ROIs, liver input."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_plus.classifier.crops import (bounding_box, candidate_rois, lesion_grid, lesion_roi, liver_input,
                                          normalise_intensity)
from nnunet_plus.classifier.resampling import sample_grid

DEMO_SPACING = (6.0, 5.0, 5.0)  # the demo's voxel spacing (z, y, x) mm


def _ramp_image(shape=(40, 100, 100), channels=1):
    """Channel c holds 1000*c + 10000*z + 100*y + x: every voxel identifies its position."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return np.stack([1000.0 * c + 10000.0 * z + 100.0 * y + x for c in range(channels)]).astype(np.float32)


# ---- intensity ----------------------------------------------------------------------------------------------
def test_ct_window_maps_to_minus_one_one():
    image = np.array([-1000.0, -200.0, 50.0, 300.0, 2000.0], dtype=np.float32).reshape(1, 1, 1, 5)
    out = normalise_intensity(image, scheme="ct")
    np.testing.assert_allclose(out.ravel(), [-1.0, -1.0, 0.0, 1.0, 1.0])
    assert out.dtype == np.float32
    assert image[0, 0, 0, 0] == -1000.0  # input untouched


def test_zscore_per_channel_with_mask():
    image = np.zeros((2, 1, 1, 4), dtype=np.float32)
    image[0, 0, 0] = [1.0, 3.0, 100.0, 100.0]
    image[1, 0, 0] = [-1000.0, -1000.0, 50.0, 60.0]
    mask = np.array([True, True, False, False]).reshape(1, 1, 4)
    out = normalise_intensity(image, scheme=("zscore", "ct"), mask=mask)
    # channel 0: mean 2, std 1 over the mask
    np.testing.assert_allclose(out[0].ravel(), [-1.0, 1.0, 98.0, 98.0])
    np.testing.assert_allclose(out[1].ravel(), [-1.0, -1.0, 0.0, 0.04], atol=1e-6)


def test_normalise_rejects_bad_input():
    with pytest.raises(ValueError, match="schemes for 2 channels"):
        normalise_intensity(np.zeros((2, 1, 1, 1)), scheme=("ct",))
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise_intensity(np.zeros((1, 1, 1, 1)), scheme="mri")


# ---- lesion ROI ---------------------------------------------------------------------------------------------
def test_roi_is_exact_copy_at_same_spacing_and_centred():
    image = _ramp_image()
    mask = np.zeros(image.shape[1:], bool)
    mask[20:23, 50:53, 40:43] = True  # centre voxel (21, 51, 41)
    roi = lesion_roi(image, mask, spacing=(1, 1, 1), target_spacing=(1, 1, 1))
    assert roi.shape == (2, 16, 64, 64) and roi.dtype == np.float32
    # first sample at centre - (D - 1) / 2 = 13.5 / 19.5 / 9.5, snapped to 14 / 20 / 10
    np.testing.assert_array_equal(roi[0], image[0, 14:30, 20:84, 10:74])
    np.testing.assert_array_equal(roi[1], mask[14:30, 20:84, 10:74])
    coords = np.argwhere(roi[1] > 0.5)
    # the lesion's centre lands within half a voxel of the ROI's centre (7.5, 31.5, 31.5)
    np.testing.assert_allclose(coords.mean(0), [7.0, 31.0, 31.0])


def test_roi_anisotropic_resampling():
    # input 1 x 0.5 x 0.5 mm, target 2 x 1 x 1 mm: every output step covers 2 input voxels on each axis
    image = _ramp_image((60, 160, 160))
    mask = np.zeros(image.shape[1:], bool)
    mask[29:32, 79:82, 79:82] = True  # centre (30, 80, 80)
    grid, scale = lesion_grid(bounding_box(mask), spacing=(1, 0.5, 0.5), target_spacing=(2, 1, 1))
    assert scale == 1.0 and grid.step == (2.0, 2.0, 2.0)
    roi = lesion_roi(image, mask, spacing=(1, 0.5, 0.5), target_spacing=(2, 1, 1))
    assert roi.shape == (2, 16, 64, 64)
    # sample positions: 30 + (o - 7.5) * 2 along z, 80 + (o - 31.5) * 2 in-plane; a linear ramp is unchanged by
    # linear interpolation and by symmetric Gaussian smoothing away from the borders
    o = 7
    expected = 10000.0 * (30 + (o - 7.5) * 2) + 100.0 * (80 + (31 - 31.5) * 2) + (80 + (33 - 31.5) * 2)
    assert roi[0, o, 31, 33] == pytest.approx(expected, rel=1e-5)
    assert roi[1].max() > 0.5 and roi[1, 7:9, 31:33, 31:33].min() > 0.2


def test_roi_at_volume_border_is_padded_with_minimum_or_edge():
    image = _ramp_image((20, 40, 40)) + 5.0
    mask = np.zeros(image.shape[1:], bool)
    mask[0:2, 0:2, 0:2] = True  # corner lesion, centre (0.5, 0.5, 0.5)
    roi = lesion_roi(image, mask, spacing=(1, 1, 1), target_spacing=(1, 1, 1))
    # first samples at 0.5 - 7.5 = -7 (z) and 0.5 - 31.5 = -31 (y, x): indices < 0 are padding
    assert np.all(roi[0, :7] == 5.0) and np.all(roi[0, :, :31] == 5.0)  # image minimum = 5
    np.testing.assert_array_equal(roi[0, 7:, 31:, 31:], image[0, 0:9, 0:33, 0:33])
    np.testing.assert_array_equal(np.argwhere(roi[1] > 0.5).min(0), [7, 31, 31])
    assert roi[1].sum() == 8
    edge = lesion_roi(image, mask, spacing=(1, 1, 1), target_spacing=(1, 1, 1), pad_mode="edge")
    assert edge[0, 0, 0, 0] == image[0, 0, 0, 0]
    np.testing.assert_array_equal(edge[0, 0, 31:, 31:], image[0, 0, 0:33, 0:33])
    fixed = lesion_roi(image, mask, spacing=(1, 1, 1), target_spacing=(1, 1, 1), pad_value=-7.0)
    assert fixed[0, 0, 0, 0] == -7.0


def test_big_lesion_zoom_rule_keeps_aspect_and_fits_lesion():
    image = np.zeros((1, 60, 120, 120), np.float32)
    mask = np.zeros(image.shape[1:], bool)
    mask[10:50, 20:100, 40:80] = True  # 40 x 80 x 40 voxels at 1 mm
    grid, scale = lesion_grid(bounding_box(mask), spacing=(1, 1, 1), target_spacing=(1, 1, 1), margin=0.25)
    # needed extent = size * 1.5 = (60, 120, 60) mm vs field of view (16, 64, 64) -> scale = 60 / 16 = 3.75
    assert scale == pytest.approx(3.75)
    assert grid.step == pytest.approx((3.75, 3.75, 3.75))
    roi = lesion_roi(image, mask, spacing=(1, 1, 1), target_spacing=(1, 1, 1), mask_order=0)
    inside = np.argwhere(roi[1] > 0.5)
    lo, hi = inside.min(0), inside.max(0) + 1
    # the lesion spans size / 3.75 output voxels: (10.7, 21.3, 10.7), none of it touches the ROI border
    np.testing.assert_allclose(hi - lo, [40 / 3.75, 80 / 3.75, 40 / 3.75], atol=1.0)
    assert lo.min() >= 2 and np.all(hi <= np.array([14, 62, 62]))
    cropped = lesion_roi(image, mask, spacing=(1, 1, 1), target_spacing=(1, 1, 1), large_lesion="crop",
                         mask_order=0)
    # fixed 16 x 64 x 64 field of view: inside the lesion along z and y, the 40 lesion columns of 64 along x
    assert np.all(cropped[1, :, :, 12:52] == 1.0) and cropped[1].sum() == 16 * 64 * 40


def test_small_lesion_is_not_zoomed_anisotropic():
    grid, scale = lesion_grid([0, 0, 0, 5, 20, 20], spacing=(5.0, 0.7, 0.7), target_spacing=(2.5, 0.8, 0.8))
    # 25 mm * 1.5 = 37.5 <= 40 mm (z); 14 mm * 1.5 = 21 <= 51.2 mm in-plane
    assert scale == 1.0
    assert grid.step == pytest.approx((0.5, 0.8 / 0.7, 0.8 / 0.7))


def test_candidate_rois_uses_only_its_own_lesion_and_multichannel():
    image = _ramp_image((30, 80, 80), channels=3)
    instances = np.zeros(image.shape[1:], np.int32)
    instances[10:12, 30:34, 30:34] = 1
    instances[10:12, 36:40, 36:40] = 2  # neighbour inside the first ROI
    rois, scales = candidate_rois(image, instances, [1, 2], [[10, 30, 30, 12, 34, 34], [10, 36, 36, 12, 40, 40]],
                                  spacing=(1, 1, 1), target_spacing=(1, 1, 1), mask_order=0)
    assert rois.shape == (2, 4, 16, 64, 64)
    np.testing.assert_array_equal(scales, [1.0, 1.0])
    assert rois[0, 3].sum() == 32 and rois[1, 3].sum() == 32
    # channels keep their own values: channel c = channel 0 + 1000 c
    np.testing.assert_array_equal(rois[0, 2] - rois[0, 0], 2000.0)


def test_roi_rejects_empty_mask():
    with pytest.raises(ValueError, match="mask is empty"):
        lesion_roi(np.zeros((1, 4, 4, 4)), np.zeros((4, 4, 4), bool), spacing=(1, 1, 1), target_spacing=(1, 1, 1))


def test_sample_grid_downsampling_is_antialiased():
    stripes = (np.indices((8, 64, 64))[1] % 2).astype(np.float32)  # rows alternate 0 / 1, local mean 0.5
    grid, _ = lesion_grid([0, 0, 0, 8, 63, 63], spacing=(1, 1, 1), target_spacing=(1, 2, 2), roi_shape=(8, 16, 16),
                          large_lesion="crop")
    # centre row 31, step 2: samples at rows 31 + (o - 7.5) * 2 = 16, 18, ... (even rows, value 0)
    raw = sample_grid(stripes, grid, pad_mode="edge", antialias=False)
    assert np.all(raw == 0.0)  # aliased to a false constant
    smooth = sample_grid(stripes, grid, pad_mode="edge")
    # Gaussian sigma = (2 - 1) / 2 = 0.5 voxel (skimage's rule) damps the Nyquist stripes: error 0.5 -> < 0.3
    assert np.abs(smooth - 0.5).max() < 0.3


# ---- lesion-scale field of view (roi_fov="lesion") ----------------------------------------------------------
def _fov_mm(grid, spacing):
    """Physical extent (z, y, x) mm of a grid: output voxels x output spacing."""
    return np.array([grid.shape[a] * grid.step[a] * spacing[a] for a in range(3)])


@pytest.mark.parametrize("bbox, context, floor, side", [
    # 2 x 2 x 2 voxels = 12 x 10 x 10 mm: 2 x 12 = 24 mm < floor 32 mm -> the floor
    ([20, 60, 60, 22, 62, 62], 2.0, 32.0, 32.0),
    # 10 x 12 x 8 voxels = 60 x 60 x 40 mm: 2 x 60 = 120 mm > floor -> context x the longest side
    ([10, 40, 40, 20, 52, 48], 2.0, 32.0, 120.0),
    # flat lesion, longest side in-plane: 1 x 16 x 4 voxels = 6 x 80 x 20 mm; 1.5 x 80 = 120 mm
    ([5, 10, 10, 6, 26, 14], 1.5, 32.0, 120.0),
    # small lesion with a higher floor
    ([20, 60, 60, 22, 62, 62], 2.0, 50.0, 50.0),
])
def test_lesion_fov_is_a_cube_of_context_times_extent_with_floor(bbox, context, floor, side):
    """The lesion rule's field of view is a cube of side max(floor, context x longest bounding-box side) mm.

    Parameters
    ----------
    bbox : lesion bounding box in voxels at the demo spacing 6 x 5 x 5 mm.
    context, floor : ``roi_context`` and ``roi_min_mm``.
    side : expected side of the field of view in mm.
    """
    target = (3.0, 1.0, 1.0)
    grid, scale = lesion_grid(bbox, spacing=DEMO_SPACING, target_spacing=target, roi_fov="lesion",
                              roi_context=context, roi_min_mm=floor)
    assert grid.shape == (16, 32, 32)  # the lesion rule's default grid
    np.testing.assert_allclose(_fov_mm(grid, DEMO_SPACING), [side, side, side])
    np.testing.assert_allclose(grid.centre, [(bbox[a] + bbox[a + 3] - 1) / 2 for a in range(3)])
    # scale: geometric mean of output spacing / target spacing = (side/16/3 * side/32 * side/32) ** (1/3)
    expected = ((side / 16 / 3.0) * (side / 32) ** 2) ** (1 / 3)
    assert scale == pytest.approx(expected)


def test_lesion_fov_depends_on_the_lesion_only_and_scale_grows_with_size():
    """The lesion rule's field of view does not depend on the target spacing; ``roi_scale`` is the zoom relative to
    it (geometric mean over the axes) and grows with the lesion above the floor."""
    bbox = [0, 0, 0, 6, 10, 10]  # 36 x 50 x 50 mm at 6 x 5 x 5 mm -> a 100 mm cube
    scales = []
    for target in ((6.0, 5.0, 5.0), (1.0, 0.5, 0.5)):
        grid, scale = lesion_grid(bbox, spacing=DEMO_SPACING, target_spacing=target, roi_fov="lesion")
        np.testing.assert_allclose(_fov_mm(grid, DEMO_SPACING), [100.0] * 3)
        scales.append(scale)
    # the same grid against a target spacing 6 x 10 x 10 times finer: zoom (6 * 10 * 10) ** (1/3) times larger
    assert scales[1] / scales[0] == pytest.approx((6 * 10 * 10) ** (1 / 3))
    # cubes of n voxels: longest side 6 n mm (z); 2 x 6 n <= 32 mm for n = 1, 2 (floor), then 12 n mm
    sizes = [lesion_grid([0, 0, 0, n, n, n], spacing=DEMO_SPACING, target_spacing=DEMO_SPACING, roi_fov="lesion")[1]
             for n in (1, 2, 3, 5, 10)]
    assert sizes[0] == sizes[1] and np.all(np.diff(sizes[1:]) > 0)
    assert sizes[4] / sizes[3] == pytest.approx(2.0)


def test_lesion_crop_is_centred_and_upsampled_linearly():
    """A ramp image (linear in z, y, x) is reproduced exactly by the trilinear upsampling of a small lesion's
    crop, and the crop's centre is the bounding box's centre."""
    image = _ramp_image((40, 100, 100))
    mask = np.zeros(image.shape[1:], bool)
    mask[20:22, 50:52, 40:42] = True  # 12 x 10 x 10 mm at 6 x 5 x 5 mm: floor 32 mm -> 2 / 1 / 1 mm voxels
    roi = lesion_roi(image, mask, spacing=DEMO_SPACING, target_spacing=DEMO_SPACING, roi_fov="lesion")
    assert roi.shape == (2, 16, 32, 32) and roi.dtype == np.float32
    # output voxel (o_z, o_y, o_x) sits at input (20.5 + (o_z - 7.5) / 3, 50.5 + (o_y - 15.5) / 5, ...)
    oz, oy, ox = np.meshgrid(np.arange(16), np.arange(32), np.arange(32), indexing="ij")
    expected = (10000.0 * (20.5 + (oz - 7.5) * 2 / 6) + 100.0 * (50.5 + (oy - 15.5) / 5)
                + (40.5 + (ox - 15.5) / 5))
    np.testing.assert_allclose(roi[0], expected, rtol=1e-6)
    # the soft mask is symmetric about the crop's centre and peaks there
    np.testing.assert_allclose(roi[1], roi[1][::-1, ::-1, ::-1], atol=1e-6)
    assert roi[1, 7:9, 15:17, 15:17].min() == pytest.approx(roi[1].max())


@pytest.mark.parametrize("shape", [(16, 32, 32), (24, 24, 24), (8, 64, 16)])
def test_large_lesion_spans_one_over_context_of_the_crop(shape):
    """A lesion above the floor spans 1 / roi_context of the crop along its longest axis, and its aspect is kept
    (cube field of view) whatever ``roi_shape``.

    Parameters
    ----------
    shape : ``roi_shape`` of the crop.
    """
    image = np.zeros((1, 70, 120, 120), np.float32)
    mask = np.zeros(image.shape[1:], bool)
    mask[15:55, 20:100, 40:80] = True  # 40 x 80 x 40 mm at 1 mm: longest side 80 mm -> a 160 mm cube
    roi = lesion_roi(image, mask, spacing=(1, 1, 1), target_spacing=(1, 1, 1), roi_shape=shape, roi_fov="lesion",
                     mask_order=0)
    inside = np.argwhere(roi[1] > 0.5)
    extent = inside.max(0) - inside.min(0) + 1
    np.testing.assert_allclose(extent, [40 / 160 * shape[0], 80 / 160 * shape[1], 40 / 160 * shape[2]], atol=1.0)
    # fully inside the crop: the lesion never touches its border
    assert inside.min() >= 1 and np.all(inside.max(0) <= np.array(shape) - 2)


@pytest.mark.parametrize("roi_fov, low, high", [("lesion", 0.03, 0.05), ("fixed", 1e-4, 2e-4)])
def test_small_lesion_share_of_the_crop(roi_fov, low, high):
    """A 10 mm lesion (2 x 2 x 2 voxels = 12 x 10 x 10 mm at the demo's 6 x 5 x 5 mm) fills ~3.7 % of the mask
    channel of its lesion-scale crop (1200 mm3 / 32 mm cube) but ~0.012 % of the fixed 16 x 64 x 64 ROI at the
    target spacing (96 x 320 x 320 mm).

    Parameters
    ----------
    roi_fov : field-of-view rule.
    low, high : bounds of the mask channel's mean (the lesion's share of the crop's volume).
    """
    image = np.zeros((1, 40, 120, 120), np.float32)
    mask = np.zeros(image.shape[1:], bool)
    mask[20:22, 60:62, 60:62] = True
    rois, scales = candidate_rois(image, mask.astype(np.uint8), [1], [bounding_box(mask)], spacing=DEMO_SPACING,
                                  target_spacing=DEMO_SPACING, roi_fov=roi_fov)
    share = float(rois[0, -1].mean())
    assert low < share < high
    assert share == pytest.approx(12 * 10 * 10 / float(np.prod(_fov_mm(
        lesion_grid(bounding_box(mask), spacing=DEMO_SPACING, target_spacing=DEMO_SPACING, roi_fov=roi_fov)[0],
        DEMO_SPACING))), rel=0.05)  # linear interpolation keeps the mask's volume
    assert scales[0] == pytest.approx(1.0 if roi_fov == "fixed" else (2 / 6 * 1 / 5 * 1 / 5) ** (1 / 3))


def test_lesion_rule_downsampling_is_antialiased():
    """A large lesion's crop is a downsampling; the lesion rule uses the same anti-aliasing as the fixed rule."""
    stripes = (np.indices((40, 200, 200))[1] % 2).astype(np.float32)[None]  # rows alternate 0 / 1
    mask = np.zeros(stripes.shape[1:], bool)
    mask[10:30, 50:150, 50:150] = True  # 100 mm at 1 mm: a 200 mm cube on 32 in-plane voxels, step 6.25
    grid, _ = lesion_grid(bounding_box(mask), spacing=(1, 1, 1), target_spacing=(1, 1, 1), roi_fov="lesion")
    assert grid.step == pytest.approx((12.5, 6.25, 6.25))
    aliased = sample_grid(stripes[0], grid, pad_mode="edge", antialias=False)
    assert np.abs(aliased - 0.5).max() > 0.3  # samples at quarter rows: 0.125 / 0.375 / 0.625 / 0.875
    roi = lesion_roi(stripes, mask, spacing=(1, 1, 1), target_spacing=(1, 1, 1), roi_fov="lesion",
                     pad_mode="edge")
    # smoothed to the local mean 0.5 (the first and last rows see the edge padding of row 0 / row 199)
    assert np.abs(roi[0, :, 1:-1] - 0.5).max() < 0.01


@pytest.mark.parametrize("kwargs, message", [
    ({"roi_fov": "mm"}, "unknown roi_fov rule 'mm'"),
    ({"roi_fov": "lesion", "roi_context": 0.5}, "roi_context must be a finite number >= 1"),
    ({"roi_fov": "lesion", "roi_context": float("nan")}, "roi_context must be a finite number >= 1"),
    ({"roi_fov": "lesion", "roi_min_mm": 0.0}, "roi_min_mm must be a finite number of mm > 0"),
    ({"roi_fov": "lesion", "roi_min_mm": float("inf")}, "roi_min_mm must be a finite number of mm > 0"),
    ({"roi_fov": "lesion", "roi_shape": (16, 32)}, "roi_shape must be three positive integers"),
])
def test_lesion_grid_rejects_bad_options(kwargs, message):
    """Bad field-of-view options raise a ValueError naming the option.

    Parameters
    ----------
    kwargs : options passed to :func:`lesion_grid`.
    message : expected start of the error message.
    """
    with pytest.raises(ValueError, match=message):
        lesion_grid([0, 0, 0, 2, 2, 2], spacing=DEMO_SPACING, target_spacing=DEMO_SPACING, **kwargs)


# ---- liver input --------------------------------------------------------------------------------------------
def test_liver_input_shape_masking_and_fit_aspect():
    image = np.full((2, 40, 100, 100), 7.0, np.float32)
    image[1] = 3.0
    image[:, 0, 0, 0] = -1.0  # the background minimum
    liver = np.zeros(image.shape[1:], bool)
    liver[10:30, 20:60, 30:90] = True  # 20 x 40 x 60 mm at 1 mm
    image[:, 10:30, 20:60, 30:90] = [[[[5.0]]], [[[9.0]]]]
    out = liver_input(image, liver, spacing=(1, 1, 1), shape=(32, 64, 64), margin=0.0)
    assert out.shape == (2, 32, 64, 64) and out.dtype == np.float32
    # fit: cube field of view of 60 mm -> output spacing (60/32, 60/64, 60/64); the liver spans
    # 20 / 1.875 = 10.7 slices, 40 / 0.9375 = 42.7 rows and all 64 columns
    inside = np.argwhere(out[0] > 4.0)
    extent = inside.max(0) - inside.min(0) + 1
    np.testing.assert_allclose(extent, [10.7, 42.7, 64], atol=1.5)
    # outside the liver region: the fill value (channel minimum), never the outside image value 7 / 3
    assert out[0, 0, 0, 0] == pytest.approx(-1.0) and out[1, 0, 0, 0] == pytest.approx(-1.0)
    assert out[0].max() <= 5.0 + 1e-5 and out[1].max() == pytest.approx(9.0)
    stretched = liver_input(image, liver, spacing=(1, 1, 1), mode="stretch", margin=0.0)
    assert np.all(stretched[0, 1:-1, 1:-1, 1:-1] == pytest.approx(5.0))


def test_liver_input_anisotropic_spacing_keeps_physical_aspect():
    image = np.zeros((1, 20, 100, 100), np.float32)
    liver = np.zeros(image.shape[1:], bool)
    liver[5:15, 10:90, 10:90] = True  # 10 slices at 5 mm = 50 mm; 80 voxels at 1 mm = 80 mm
    image[0][liver] = 1.0
    out = liver_input(image, liver, spacing=(5, 1, 1), shape=(32, 64, 64), margin=0.0)
    inside = np.argwhere(out[0] > 0.5)
    extent = inside.max(0) - inside.min(0) + 1
    # cube of 80 mm: z spacing 2.5 mm -> 50 / 2.5 = 20 slices; in-plane 1.25 mm -> 64 voxels
    np.testing.assert_allclose(extent, [20, 64, 64], atol=1.0)


def test_liver_input_rejects_empty_region():
    with pytest.raises(ValueError, match="mask is empty"):
        liver_input(np.zeros((1, 4, 4, 4)), np.zeros((4, 4, 4), bool), spacing=(1, 1, 1))
