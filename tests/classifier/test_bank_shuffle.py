"""Lesion shuffle (cascaded paper §III-B, eq. 9): one shuffled copy of a case, and its place in the bank."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_plus.classifier import bank as bank_module
from nnunet_plus.classifier.bank import build_candidate_bank
from nnunet_plus.classifier.bank_io import CandidateBankError, load_case_bank, read_bank_metadata
from nnunet_plus.classifier.bank_settings import BankSettings
from nnunet_plus.classifier.candidate_arrays import build_case_candidates
from nnunet_plus.classifier.shuffle import shuffle_case, shuffle_lesions, shuffle_objects, shuffled_case_id
from nnunet_plus.classifier.splits import SplitError, check_bank_for_fold
from nnunet_plus.schema import build_schema

from classifier_project import write_project

LABELS = {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}
SCHEMA = build_schema(LABELS, liver=("liver",), lesions=("hcc", "cyst"), sensitivities=(1.0, 4.0))
LESIONS = SCHEMA.lesion_labels
SPACING = (2.0, 1.0, 1.0)
SMALL = BankSettings(roi_shape=(8, 16, 16), liver_shape=(4, 16, 16))
LIVER = np.s_[1:11, 4:44, 4:44]
HCC = np.s_[4:7, 10:16, 10:16]     # reference hcc, nnU-Net hcc
MISSED = np.s_[4:7, 30:35, 30:35]  # reference cyst, nnU-Net liver: a lesion nnU-Net does not show
FP = np.s_[7:9, 30:34, 10:14]      # reference liver, nnU-Net cyst: a false candidate
HCC_P, LIVER_P, CYST_P = [0.05, 0.1, 0.8, 0.05], [0.04, 0.9, 0.03, 0.03], [0.05, 0.2, 0.05, 0.7]


def make_case(seed: int = 0, *, lesions=("hcc", "missed", "fp")):
    """(image (2, 12, 48, 48) with a voxel-wise texture, reference (12, 48, 48) uint8, softmax (4, 12, 48, 48)
    float32 with voxel-wise jitter): every voxel value is distinct, so equal values mean the same voxel."""
    shape = (12, 48, 48)
    rng = np.random.default_rng(seed)
    reference = np.zeros(shape, np.uint8)
    reference[LIVER] = 1
    probabilities = np.empty((4, *shape), np.float32)
    probabilities[:] = np.array([0.9, 0.05, 0.025, 0.025])[:, None, None, None]
    probabilities[(slice(None), *LIVER)] = np.array(LIVER_P)[:, None, None, None]
    image = np.full((2, *shape), -1000.0, np.float32)
    image[(slice(None), *LIVER)] = 60.0
    boxes = {"hcc": (HCC, 2, HCC_P, 30.0), "missed": (MISSED, 3, None, 5.0), "fp": (FP, 1, CYST_P, 50.0)}
    for name in lesions:
        box, label, p, hu = boxes[name]
        reference[box] = label
        image[(slice(None), *box)] = hu
        if p is not None:
            probabilities[(slice(None), *box)] = np.array(p)[:, None, None, None]
    image += rng.normal(0.0, 5.0, size=image.shape).astype(np.float32)
    image[1] += 100.0
    probabilities += rng.uniform(0.0, 1e-3, size=probabilities.shape).astype(np.float32)
    probabilities /= probabilities.sum(axis=0, keepdims=True)
    return image, reference, probabilities


def liver_region(reference):
    return np.isin(reference, [1, *LESIONS])


def shuffle(image, reference, probabilities, seed=0, **options):
    objects = options.pop("objects", None)
    if objects is None:
        objects = shuffle_objects(reference, probabilities, lesion_labels=LESIONS, sensitivity=4.0)
    liver = options.pop("liver_region", None)
    liver = liver_region(reference) if liver is None else liver
    return shuffle_lesions(image, reference, probabilities, liver_region=liver, objects=objects,
                           lesion_labels=LESIONS, rng=np.random.default_rng(seed), **options), objects


def box_coords(box) -> np.ndarray:
    mask = np.zeros((12, 48, 48), bool)
    mask[box] = True
    return np.argwhere(mask)


def index(coords: np.ndarray):
    return tuple(coords.T)


# ---- the pure function ----------------------------------------------------------------------------------------
def test_objects_are_reference_lesions_and_nnunet_candidates():
    _, reference, probabilities = make_case()
    objects = shuffle_objects(reference, probabilities, lesion_labels=LESIONS, sensitivity=4.0)
    assert objects.dtype == np.int32 and objects.max() == 3
    for box in (HCC, MISSED, FP):  # the missed cyst (labels only) and the false candidate (softmax only)
        ids = np.unique(objects[box])
        assert ids.size == 1 and ids[0] > 0
    assert (objects > 0).sum() == 108 + 75 + 32


def test_every_object_moves_inside_the_liver():
    image, reference, probabilities = make_case()
    result, objects = shuffle(image, reference, probabilities)
    assert result.num_objects == 3 and result.num_moved == 3 and result.moved.all()
    assert np.all(np.abs(result.displacements).sum(axis=1) > 0)
    liver = liver_region(reference)
    for label, count in ((2, 108), (3, 75)):
        moved_lesion = result.reference == label
        assert moved_lesion.sum() == count          # the whole lesion, once
        assert liver[moved_lesion].all()            # inside the liver region
    # the liver region itself is unchanged: only voxels inside it were exchanged
    np.testing.assert_array_equal(liver_region(result.reference), liver)
    np.testing.assert_array_equal(result.image[:, ~liver], image[:, ~liver])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_labels_and_softmax_move_together(seed):
    image, reference, probabilities = make_case(seed)
    result, objects = shuffle(image, reference, probabilities, seed=seed)
    for box in (HCC, MISSED, FP):
        object_id = int(objects[box][0, 0, 0])
        i = list(result.object_ids).index(object_id)
        assert result.moved[i]
        old = box_coords(box)
        new = old + result.displacements[i]
        np.testing.assert_array_equal(result.image[(slice(None), *index(new))], image[(slice(None), *index(old))])
        np.testing.assert_array_equal(result.reference[index(new)], reference[index(old)])
        np.testing.assert_array_equal(result.probabilities[(slice(None), *index(new))],
                                      probabilities[(slice(None), *index(old))])
        # the vacated place holds the lesion-free liver patch the object now covers (a swap), not the lesion
        np.testing.assert_array_equal(result.reference[index(old)], 1)
        np.testing.assert_array_equal(result.image[(slice(None), *index(old))], image[(slice(None), *index(new))])
        np.testing.assert_array_equal(result.probabilities[(slice(None), *index(old))],
                                      probabilities[(slice(None), *index(new))])
        np.testing.assert_array_equal(reference[index(new)], 1)  # the new place was lesion-free liver


def test_moved_lesions_keep_their_distance():
    image, reference, probabilities = make_case()
    result, _ = shuffle(image, reference, probabilities, margin=1, gap=1)
    from scipy import ndimage

    lesions = np.isin(result.reference, LESIONS)
    components, n = ndimage.label(lesions, structure=np.ones((3, 3, 3)))
    assert n == 2  # hcc and cyst never touch
    grown = ndimage.binary_dilation(components == 1, structure=np.ones((3, 3, 3)), iterations=1)
    assert not (grown & (components == 2)).any()


def test_reference_never_leaks_into_a_candidates_prior():
    # nnU-Net misses the cyst (its softmax shows liver there): after the shuffle the cyst has moved (labels +
    # image) but no candidate reveals it, and the candidates' priors are nnU-Net's transplanted softmax
    image, reference, probabilities = make_case()
    result, _ = shuffle(image, reference, probabilities)
    assert result.num_moved == 3
    kwargs = dict(spacing=SPACING, target_spacing=SPACING, settings=SMALL)
    before = build_case_candidates("c", image, reference, probabilities, SCHEMA, **kwargs)
    after = build_case_candidates("c", result.image, result.reference, result.probabilities, SCHEMA, **kwargs)
    assert after["prior"].shape == before["prior"].shape == (2, 2)  # the hcc and the false cyst: no third one
    order = lambda a: np.lexsort(a["prior"].T)  # noqa: E731
    np.testing.assert_allclose(after["prior"][order(after)], before["prior"][order(before)], atol=1e-6)
    assert after["prior"][:, 1].max() == pytest.approx(before["prior"][:, 1].max(), abs=1e-6)  # FP's cyst prior
    np.testing.assert_array_equal(np.sort(after["target"]), [0, 2])  # hcc found, the FP is "not a lesion"
    cyst = list(after["ref_class"]).index(1)
    assert not after["ref_covered"][cyst]  # the moved cyst is still missed
    new_cyst = result.reference == 3
    moved_softmax = result.probabilities[:, new_cyst].mean(axis=1)
    np.testing.assert_allclose(moved_softmax, probabilities[(slice(None), *MISSED)].mean(axis=(1, 2, 3)), atol=1e-6)
    assert moved_softmax[1] > 0.89 and moved_softmax[3] < 0.035  # still nnU-Net's "liver" there, not the label


def test_reference_only_decides_where_not_what():
    # the softmax after a shuffle is a permutation of nnU-Net's softmax voxels: the same values, no new ones
    image, reference, probabilities = make_case()
    result, _ = shuffle(image, reference, probabilities)
    for k in range(probabilities.shape[0]):
        np.testing.assert_array_equal(np.sort(result.probabilities[k], axis=None), np.sort(probabilities[k], axis=None))
    relabelled = reference.copy()
    relabelled[HCC] = 3  # another reference class for the same lesion: the softmax moves identically
    other, _ = shuffle(image, relabelled, probabilities)
    np.testing.assert_array_equal(other.probabilities, result.probabilities)


def test_deterministic_for_a_fixed_seed_and_inputs_untouched():
    image, reference, probabilities = make_case()
    copies = [a.copy() for a in (image, reference, probabilities)]
    first, _ = shuffle(image, reference, probabilities, seed=5)
    second, _ = shuffle(image, reference, probabilities, seed=5)
    for a, b in ((first.image, second.image), (first.reference, second.reference),
                 (first.probabilities, second.probabilities), (first.displacements, second.displacements)):
        np.testing.assert_array_equal(a, b)
    other, _ = shuffle(image, reference, probabilities, seed=6)
    assert not np.array_equal(other.displacements, first.displacements)
    for original, copy in zip((image, reference, probabilities), copies):
        np.testing.assert_array_equal(original, copy)
    assert first.image.dtype == image.dtype and first.reference.dtype == reference.dtype
    assert first.probabilities.dtype == probabilities.dtype


def test_no_valid_place_leaves_the_case_unchanged():
    image, reference, probabilities = make_case(lesions=("hcc",))
    tight = np.zeros(reference.shape, bool)
    tight[3:8, 9:17, 9:17] = True  # the hcc, its margin and its gap: no room anywhere else
    result, _ = shuffle(image, reference, probabilities, liver_region=tight)
    assert result.num_objects == 1 and result.num_moved == 0
    np.testing.assert_array_equal(result.displacements, [[0, 0, 0]])
    np.testing.assert_array_equal(result.image, image)
    np.testing.assert_array_equal(result.reference, reference)
    np.testing.assert_array_equal(result.probabilities, probabilities)


def test_object_straddling_the_liver_stays_and_others_still_move():
    image, reference, probabilities = make_case()
    liver = liver_region(reference)
    liver[7:9, 30:34, 12:14] = False  # half of the false candidate lies outside the liver region
    result, objects = shuffle(image, reference, probabilities, liver_region=liver)
    fp = list(result.object_ids).index(int(objects[FP][0, 0, 0]))
    assert not result.moved[fp] and result.num_moved == 2
    np.testing.assert_array_equal(result.probabilities[(slice(None), *FP)], probabilities[(slice(None), *FP)])


def test_exact_search_finds_the_only_place():
    image, reference, probabilities = make_case(lesions=("hcc",))
    liver = np.zeros(reference.shape, bool)
    liver[3:8, 9:17, 9:17] = True
    liver[3:8, 9:17, 30:38] = True  # exactly one free place of the same size
    result, _ = shuffle(image, reference, probabilities, liver_region=liver, max_tries=0)
    assert result.num_moved == 1
    np.testing.assert_array_equal(result.displacements, [[0, 0, 21]])
    assert np.argwhere(result.reference == 2).min(axis=0).tolist() == [4, 10, 31]


def test_case_without_objects_is_a_plain_copy():
    image, reference, probabilities = make_case(lesions=())
    result, objects = shuffle(image, reference, probabilities)
    assert not objects.any() and result.num_objects == 0 and result.num_moved == 0
    np.testing.assert_array_equal(result.image, image)
    assert result.image is not image


def test_bad_inputs_raise_readable_errors():
    image, reference, probabilities = make_case()
    objects = shuffle_objects(reference, probabilities, lesion_labels=LESIONS)
    liver = liver_region(reference)
    good = dict(liver_region=liver, objects=objects, lesion_labels=LESIONS, rng=np.random.default_rng(0))
    cases = [
        ((image[0], reference, probabilities), {}, r"image must be \(C, Z, Y, X\), got shape \(12, 48, 48\)"),
        ((image, reference[:, :-1], probabilities), {}, r"reference must have the image's spatial shape"),
        ((image, reference.astype(np.float32), probabilities), {}, "reference must hold integer labels"),
        ((image, reference, probabilities[:, :, :-2]), {}, r"probabilities must be \(K, Z, Y, X\) with"),
        ((image, reference, probabilities), {"liver_region": liver[:-1]}, "liver_region must have"),
        ((image, reference, probabilities), {"liver_region": liver * 2.0}, "liver_region must be a boolean mask"),
        ((image, reference, probabilities), {"objects": objects[:, :3]}, "objects must have"),
        ((image, reference, probabilities), {"objects": objects - 1}, "non-negative ids"),
        ((image, reference, probabilities), {"lesion_labels": [2, 7]}, r"lesion_labels \[2, 7\] must be"),
        ((image, reference, probabilities), {"rng": 0}, "rng must be a numpy.random.Generator"),
        ((image, reference, probabilities), {"margin": -1}, "margin must be an integer >= 0"),
        ((image, reference, probabilities), {"gap": 1.5}, "gap must be an integer >= 0"),
    ]
    for args, changes, message in cases:
        with pytest.raises(ValueError, match=message):
            shuffle_lesions(*args, **{**good, **changes})
    with pytest.raises(ValueError, match=r"probabilities must be \(K, Z, Y, X\)"):
        shuffle_objects(reference, probabilities[0], lesion_labels=LESIONS)
    with pytest.raises(ValueError, match="sensitivity must be positive"):
        shuffle_objects(reference, probabilities, lesion_labels=LESIONS, sensitivity=0)


def test_shuffle_case_uses_the_schema():
    image, reference, probabilities = make_case()
    result = shuffle_case(image, reference, probabilities, SCHEMA, rng=np.random.default_rng(3))
    expected, _ = shuffle(image, reference, probabilities, seed=3)
    np.testing.assert_array_equal(result.reference, expected.reference)
    assert result.num_moved == 3


def test_shuffle_case_keeps_both_liver_regions():
    from nnunet_plus.postprocessing.multi_sensitivity import multi_sensitivity_labels

    image, reference, probabilities = make_case()
    probabilities[:, 1:11, 36:44, 4:44] = np.array([0.9, 0.05, 0.025, 0.025])[:, None, None, None]  # nnU-Net: outside
    results = [shuffle_case(image, reference, probabilities, SCHEMA, rng=np.random.default_rng(seed))
               for seed in range(4)]

    def nnunet_liver(p):
        return np.isin(multi_sensitivity_labels(p, LESIONS, (1.0,))[0], [1, *LESIONS])

    for result in results:
        assert result.num_moved == 3
        np.testing.assert_array_equal(liver_region(result.reference), liver_region(reference))
        np.testing.assert_array_equal(nnunet_liver(result.probabilities), nnunet_liver(probabilities))
        assert not np.isin(result.reference[:, 35:44], LESIONS).any()  # nor the rim: not liver for nnU-Net


# ---- the bank -------------------------------------------------------------------------------------------------
def test_split_maps_copies_to_their_originals_fold():
    splits = [{"train": ["c2", "c3"], "val": ["c0", "c1"]}, {"train": ["c0", "c1"], "val": ["c2", "c3"]}]
    bank = {}
    for k, s in enumerate(splits):
        for case in s["val"]:
            softmax = f"/r/fold_{k}/validation/{case}.npz"
            bank[case] = {"softmax": softmax}
            bank[shuffled_case_id(case, 1)] = {"softmax": softmax, "shuffle_of": case}
    fold0 = check_bank_for_fold(bank, splits, 0)
    assert fold0.train == ("c2", "c2__shuffle1", "c3", "c3__shuffle1") and fold0.val == ("c0", "c1")
    fold1 = check_bank_for_fold(bank, splits, 1)
    assert fold1.train == ("c0", "c0__shuffle1", "c1", "c1__shuffle1") and fold1.val == ("c2", "c3")
    with pytest.raises(SplitError, match=r"names lesion-shuffled bank copies \['c0__shuffle1'\]"):
        check_bank_for_fold(bank, [{"train": ["c2", "c3"], "val": ["c0", "c0__shuffle1"]}], 0)
    bank["c2__shuffle1"]["softmax"] = "/r/fold_0/validation/c2.npz"  # exported by a fold that trained on c2
    with pytest.raises(SplitError, match=r"c2__shuffle1 \(exported by fold 0, which trained on it\)"):
        check_bank_for_fold(bank, splits, 0)


def test_bank_build_with_one_shuffle(tmp_path, monkeypatch):
    project = write_project(tmp_path)
    folds = [project.model / f"fold_{k}" / "validation" for k in (0, 1)]
    settings = BankSettings(roi_shape=(16, 32, 32), liver_shape=(16, 32, 32))
    out = tmp_path / "bank"
    paths = build_candidate_bank(project.raw, folds, out, project.schema, target_spacing=project.spacing,
                                 settings=settings, num_processes=1, quiet=True, lesion_shuffles=1)
    assert [p.stem for p in paths] == sorted(c + s for c in project.cases for s in ("", "__shuffle1"))
    meta = read_bank_metadata(out)
    assert meta["lesion_shuffles"] == 1
    for case, kind in zip(project.cases, project.kinds):
        entry, copy = meta["cases"][case], meta["cases"][f"{case}__shuffle1"]
        assert "shuffle_of" not in entry and copy["shuffle_of"] == case
        assert copy["softmax"] == entry["softmax"]  # the original's out-of-fold export
        assert copy["num_candidates"] == entry["num_candidates"]
        assert copy["objects"] == {"full": 5, "single": 1, "empty": 0}[kind]
        original, shuffled = load_case_bank(out / f"{case}.npz"), load_case_bank(out / f"{case}__shuffle1.npz")
        assert shuffled.case_id == f"{case}__shuffle1"
        np.testing.assert_array_equal(np.sort(shuffled.target), np.sort(original.target))
        np.testing.assert_array_equal(np.sort(shuffled.ref_class), np.sort(original.ref_class))
        np.testing.assert_allclose(np.sort(shuffled.prior, axis=0), np.sort(original.prior, axis=0), atol=1e-3)
        np.testing.assert_array_equal(shuffled.patient, original.patient)
        if kind != "empty":
            assert copy["objects_moved"] == copy["objects"]
            assert not np.array_equal(np.sort(shuffled.bbox, axis=0), np.sort(original.bbox, axis=0))
    for fold in (0, 1):
        cases = check_bank_for_fold(meta["cases"], project.splits, fold)
        assert set(cases.train) == {c + s for c in project.splits[fold]["train"] for s in ("", "__shuffle1")}
        assert cases.val == tuple(sorted(project.splits[fold]["val"]))

    # resumed: nothing rebuilt, the copies' entries kept; another K is refused
    def no_build(job):
        raise AssertionError(f"{job.case_id} rebuilt")

    monkeypatch.setattr(bank_module, "_build_case_job", no_build)
    assert build_candidate_bank(project.raw, folds, out, project.schema, target_spacing=project.spacing,
                                settings=settings, num_processes=1, quiet=True, lesion_shuffles=1) == paths
    assert json.loads((out / "bank.json").read_text())["cases"] == meta["cases"]
    with pytest.raises(CandidateBankError, match=r"different \['lesion_shuffles'\]"):
        build_candidate_bank(project.raw, folds, out, project.schema, target_spacing=project.spacing,
                             settings=settings, num_processes=1, quiet=True)
    monkeypatch.undo()
    # a lost copy is rebuilt alone, identical (its seed depends on the case and the copy number only)
    lost = out / "cls_000__shuffle1.npz"
    kept = load_case_bank(lost)
    lost.unlink()
    mtime = (out / "cls_000.npz").stat().st_mtime_ns
    build_candidate_bank(project.raw, folds, out, project.schema, target_spacing=project.spacing,
                         settings=settings, num_processes=1, quiet=True, lesion_shuffles=1)
    assert (out / "cls_000.npz").stat().st_mtime_ns == mtime
    rebuilt = load_case_bank(lost)
    np.testing.assert_array_equal(rebuilt.bbox, kept.bbox)
    np.testing.assert_array_equal(rebuilt.crops, kept.crops)
    with pytest.raises(ValueError, match="lesion_shuffles must be an integer >= 0"):
        build_candidate_bank(project.raw, folds, out, project.schema, target_spacing=project.spacing,
                             settings=settings, lesion_shuffles=-1)
