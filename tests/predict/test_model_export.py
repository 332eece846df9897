"""nnunet_plus_export_model / nnunet_plus_install_model (issue 15, point 4) on a fake results tree: small files
stand in for checkpoints and summaries, so every test runs in well under a second."""
from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest

from nnunet_plus.model_export import CARD_JSON, CARD_MARKDOWN, SYNTHETIC_NOTE, export_main, install_main

DATASET = "Dataset777_ExportMe"
TRAINER, PLANS, CONFIG = "nnUNetTrainerPLUS", "nnUNetPlans", "3d_fullres"
NNUNET = f"{DATASET}/{TRAINER}__{PLANS}__{CONFIG}"
CLASSIFIER = f"{DATASET}/PLUSClassifier__{TRAINER}__{PLANS}__{CONFIG}"
LABELS = {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}
PLUS = {"liver": ["liver"], "lesions": ["hcc", "cyst"], "malignant": ["hcc"], "benign": ["cyst"]}


def _summary(lesion_f1: float, malignant_f1: float | None, benign_f1: float) -> dict:
    return {"meta": {"n_cases": 4}, "lesion_level": {"f1": lesion_f1},
            "patient_level": {"malignant": {"f1": malignant_f1}, "benign": {"f1": benign_f1}}}


def _write(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps(content) if not isinstance(content, str) else content)


def make_results(root: Path, *, phantom: bool = True, seed: bytes = b"weights", folds=(0, 1),
                 classifier: bool = True) -> Path:
    """A results tree with an nnU-Net model (2 folds) and a PLUS classifier folder, plus files to leave out."""
    dataset_json = {"name": "ExportMe", "labels": LABELS, "channel_names": {"0": "CT"}, "numTraining": 8,
                    "file_ending": ".nii.gz", "plus": PLUS}
    if phantom:
        dataset_json["phantom"] = {"seed": 0, "shape": [24, 64, 64]}
    model = root / NNUNET
    _write(model / "dataset.json", dataset_json)
    _write(model / "plans.json", {"dataset_name": DATASET, "plans_name": PLANS})
    _write(model / "dataset_fingerprint.json", {"spacings": [[4.0, 1.5, 1.5]]})
    for fold in folds:
        f = model / f"fold_{fold}"
        _write(f / "checkpoint_final.pth", seed + bytes([fold]) * 100)
        _write(f / "checkpoint_best.pth", b"best")
        _write(f / "checkpoint_latest.pth", b"latest")
        _write(f / "validation" / "plus_summary.json",
               {"tiers": {"confident": _summary(0.5 + 0.1 * fold, 0.8, None)}})
        _write(f / "validation" / "summary.json", {"foreground_mean": {"Dice": 0.9}})
        _write(f / "validation" / "case_000.npz", b"softmax")
        _write(f / "validation" / "case_000.pkl", b"props")
    if classifier:
        clf = root / CLASSIFIER
        _write(clf / "operating_point.json", {"format": "nnunet_plus.operating_point", "identity": False,
                                              "description": "reject confident candidates above 0.7"})
        _write(clf / "candidate_bank" / "bank.json", {"cases": {"case_000": {}}})
        _write(clf / "candidate_bank" / "case_000.npz", b"crops")
        for fold in folds:
            f = clf / f"fold_{fold}"
            _write(f / "checkpoint_final.pth", seed + b"clf" + bytes([fold]))
            _write(f / "checkpoint_latest.pth", b"latest")
            _write(f / "operating_point.json", {"format": "nnunet_plus.operating_point"})
            _write(f / "validation" / "summary.json",
                   {"nnunet": _summary(0.5, 0.8, 0.4), "nnunet+plus": _summary(0.6, 0.9, 0.5)})
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    root = make_results(tmp_path / "results")
    monkeypatch.setenv("nnUNet_results", str(root))
    return root


def _export(out: Path, *extra: str) -> int:
    return export_main(["-d", DATASET, "-c", CONFIG, "-tr", TRAINER, "-o", str(out), *extra])


def test_export_then_install_gives_byte_identical_files(results, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shared" / "model.zip"
    assert _export(out) == 0
    names = zipfile.ZipFile(out).namelist()
    assert not any(n.endswith(".npz") or n.endswith(".pkl") for n in names), names
    assert not any("checkpoint_latest" in n or "checkpoint_best" in n for n in names), names
    assert f"{CLASSIFIER}/candidate_bank/bank.json" in names and f"{CLASSIFIER}/operating_point.json" in names
    assert f"{NNUNET}/{CARD_JSON}" in names and f"{NNUNET}/{CARD_MARKDOWN}" in names
    assert [p.name for p in out.parent.iterdir()] == ["model.zip"]  # no temp file left beside it

    fresh = tmp_path / "fresh_results"
    monkeypatch.setenv("nnUNet_results", str(fresh))
    assert install_main([str(out)]) == 0
    assert "installed" in capsys.readouterr().out
    installed, original = _files(fresh), _files(results)
    card_files = {f"{NNUNET}/{CARD_JSON}", f"{NNUNET}/{CARD_MARKDOWN}"}
    assert set(installed) - card_files == set(names) - card_files
    for name in set(installed) - card_files:
        assert installed[name] == original[name], name
    assert not [p for p in (fresh / DATASET).iterdir() if p.name.startswith(".")]  # staging folder removed

    assert install_main([str(out)]) == 0  # same content again
    assert "already installed" in capsys.readouterr().out


def test_model_card_lists_folds_figures_and_synthetic_line(results, tmp_path):
    out = tmp_path / "model.zip"
    assert _export(out) == 0
    with zipfile.ZipFile(out) as zf:
        card = json.loads(zf.read(f"{NNUNET}/{CARD_JSON}"))
        markdown = zf.read(f"{NNUNET}/{CARD_MARKDOWN}").decode()
    assert card["model"]["folds"] == [0, 1] and card["model"]["classifier_folds"] == [0, 1]
    assert card["model"]["trainer"] == TRAINER and card["model"]["plans"] == PLANS
    assert card["labels"] == LABELS and card["schema"] == PLUS and card["dataset"]["name"] == DATASET
    assert card["training_cohort"]["synthetic"] is True and SYNTHETIC_NOTE in card["notes"]
    assert card["intended_use"] == "research only, not for clinical use"
    assert card["validation"]["nnunet"]["fold_1"]["lesion_f1"] == pytest.approx(0.6)
    assert card["validation"]["classifier"]["fold_0"]["nnunet_plus"]["benign_patient_f1"] == 0.5
    assert card["operating_point"]["description"] == "reject confident candidates above 0.7"
    assert set(card["software"]) == {"nnunet_plus", "nnunetv2", "torch", "python"}
    assert "fold_0" in markdown and "fold_1" in markdown and "synthetic data only" in markdown
    assert "research only, not for clinical use" in markdown and "60.0 %" in markdown


def test_no_synthetic_line_without_phantom_block(tmp_path, monkeypatch):
    root = make_results(tmp_path / "results", phantom=False, classifier=False)
    monkeypatch.setenv("nnUNet_results", str(root))
    out = tmp_path / "model.zip"
    assert _export(out, "-f", "0") == 0
    with zipfile.ZipFile(out) as zf:
        card = json.loads(zf.read(f"{NNUNET}/{CARD_JSON}"))
        names = zf.namelist()
    assert card["training_cohort"]["synthetic"] is False and SYNTHETIC_NOTE not in card["notes"]
    assert card["model"]["folds"] == [0] and card["model"]["classifier_folder"] is None
    assert not any("fold_1" in n or "PLUSClassifier" in n for n in names)


def test_missing_fold_is_one_line_error_and_no_zip(results, tmp_path, capsys):
    out = tmp_path / "model.zip"
    assert _export(out, "-f", "0", "2") == 1
    line = _one_line_error(capsys.readouterr().err, "nnunet_plus_export_model")
    assert "fold 2" in line and str(results / NNUNET / "fold_2" / "checkpoint_final.pth") in line
    assert "nnUNetv2_train" in line
    assert list(tmp_path.glob("*.zip")) == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_model_folder_and_usage_errors(results, tmp_path, capsys):
    assert export_main(["-d", DATASET, "-c", "2d", "-o", str(tmp_path / "m.zip")]) == 1
    line = _one_line_error(capsys.readouterr().err, "nnunet_plus_export_model")
    assert str(results / f"{DATASET}/{TRAINER}__{PLANS}__2d") in line and "nnUNetv2_train" in line
    assert export_main(["-d", DATASET, "-c", CONFIG, "-f", "1_old", "-o", str(tmp_path / "m.zip")]) == 2
    assert install_main([]) == 2
    assert not list(tmp_path.glob("*.zip"))


def test_missing_classifier_fold_is_named(results, tmp_path, capsys):
    (results / CLASSIFIER / "fold_1" / "checkpoint_final.pth").unlink()
    assert _export(tmp_path / "m.zip", "-f", "0", "1") == 1
    line = _one_line_error(capsys.readouterr().err, "nnunet_plus_export_model")
    assert "PLUS classifier" in line and "nnunet_plus_train_classifier" in line
    assert _export(tmp_path / "m.zip", "-f", "0", "1", "--no-classifier") == 0


def test_install_over_a_different_model_needs_force(results, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.zip"
    assert _export(out) == 0
    other = make_results(tmp_path / "other", seed=b"other weights")
    monkeypatch.setenv("nnUNet_results", str(other))
    before = _files(other)
    assert install_main([str(out)]) == 1
    line = _one_line_error(capsys.readouterr().err, "nnunet_plus_install_model")
    assert "--force" in line and (str(other / CLASSIFIER) in line or str(other / NNUNET) in line)
    assert _files(other) == before
    assert not [p for p in (other / DATASET).iterdir() if p.name.startswith(".")]

    assert install_main([str(out), "--force"]) == 0
    after = _files(other)
    for name, content in _files(results).items():
        if name in zipfile.ZipFile(out).namelist():
            assert after[name] == content, name
    assert f"{NNUNET}/fold_0/checkpoint_latest.pth" not in after  # the folder was replaced, not merged
    assert not [p for p in (other / DATASET).iterdir() if p.name.startswith(".")]


def _tampered_zip(source: Path, target: Path, name: str, *, symlink: bool = False) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        extra = zipfile.ZipInfo(name)
        if symlink:
            extra.create_system = 3
            extra.external_attr = (stat.S_IFLNK | 0o777) << 16
            dst.writestr(extra, "/etc/passwd")
        else:
            dst.writestr(extra, b"evil")
    return target


@pytest.mark.parametrize("name, symlink", [("../evil", False), (f"{DATASET}/../../evil", False),
                                           ("/tmp/nnunet_plus_evil_absolute", False),
                                           (f"{NNUNET}/fold_0/link", True)])
def test_unsafe_members_are_refused_and_nothing_is_written(results, tmp_path, monkeypatch, capsys, name, symlink):
    out = tmp_path / "model.zip"
    assert _export(out) == 0
    bad = _tampered_zip(out, tmp_path / "bad.zip", name, symlink=symlink)
    fresh = tmp_path / "deep" / "fresh_results"
    monkeypatch.setenv("nnUNet_results", str(fresh))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert install_main([str(bad)]) == 1
    line = _one_line_error(capsys.readouterr().err, "nnunet_plus_install_model")
    assert "refusing" in line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/nnunet_plus_evil_absolute").exists()


def test_zip_without_model_card_or_corrupt_is_refused(results, tmp_path, monkeypatch, capsys):
    plain = tmp_path / "nnunet_only.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr(f"{NNUNET}/plans.json", "{}")
    corrupt = tmp_path / "corrupt.zip"
    assert _export(corrupt) == 0
    data = bytearray(corrupt.read_bytes())
    corrupt.write_bytes(bytes(data[: len(data) // 2]))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "fresh"))
    assert install_main([str(plain)]) == 1
    line = _one_line_error(capsys.readouterr().err, "nnunet_plus_install_model")
    assert CARD_JSON in line and "not an nnunet_plus model" in line
    assert install_main([str(corrupt)]) == 1
    line = _one_line_error(capsys.readouterr().err, "nnunet_plus_install_model")
    assert str(corrupt) in line and "zip" in line
    assert not (tmp_path / "fresh").exists()


def test_altered_member_fails_its_hash(results, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.zip"
    assert _export(out) == 0
    altered = tmp_path / "altered.zip"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(altered, "w") as dst:
        for info in src.infolist():
            content = src.read(info)
            dst.writestr(info, b"swapped" if info.filename.endswith("fold_0/checkpoint_final.pth") else content)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "fresh"))
    assert install_main([str(altered)]) == 1
    line = _one_line_error(capsys.readouterr().err, "nnunet_plus_install_model")
    assert "SHA-256" in line
    assert not [p for p in (tmp_path / "fresh").rglob("*") if p.is_file()]
