"""The scripts of examples/, run the way a new user runs them (``bash`` / ``python`` in a subprocess) on tiny inputs.

* ``configure_dataset.sh`` writes the lesion schema of a tiny raw dataset (the fixture ``example_project``);
* ``plug_and_play.py`` post-processes that dataset's synthetic probability maps (written with the example's own
  ``write_probability_maps``) and label maps: every output file, the lesion table in pandas, the case JSON;
* ``python_api.py`` predicts two cases with the tiny nnU-Net model of tests/conftest.py (``tiny_trained_model``,
  shared with tests/predict), reads the tables and evaluates against the reference labels;
* ``five_fold_workflow.sh`` needs a real dataset and a GPU: ``bash -n``, and every command it calls and every
  ``-flag`` it gives that command appear in the command's ``--help``; the same check for ``configure_dataset.sh``.

The synthetic probability maps are those of docs/case_json.md's example.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BIN = Path(sys.executable).parent
DATASET_ID = 903
DATASET_NAME = "Dataset903_Example"
LABELS = {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}
SPACING_XYZ = (1.5, 1.5, 4.0)
ORIGIN = (-48.0, -48.0, 100.0)
#: case -> the lesion types of its reference label map (tiny_case(1): hcc + cyst, tiny_case(2): hcc)
CASES = {"case_001": {"hcc", "cyst"}, "case_002": {"hcc"}}


def run_example(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``args`` with the venv's commands first on PATH; fail with the output when the exit code is not 0."""
    env = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    return done


def load_example(name: str):
    """An example script as a module (for the functions it offers to copy)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_image(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def soft_probabilities(labels: np.ndarray) -> np.ndarray:
    """A (4, Z, Y, X) softmax "from another model": blurred one-hot labels, a quarter of each lesion's mass given
    to the other lesion type, and a faint blob in the liver (a lesion only at sensitivity f = 4)."""
    probabilities = np.stack([gaussian_filter((labels == k).astype(np.float32), sigma=(0.5, 1.0, 1.0))
                              for k in range(len(LABELS))])
    hcc, cyst = probabilities[2].copy(), probabilities[3].copy()
    probabilities[2], probabilities[3] = 0.75 * hcc + 0.25 * cyst, 0.75 * cyst + 0.25 * hcc
    z, y, x = np.meshgrid(*[np.arange(s) for s in labels.shape], indexing="ij")
    liver = np.argwhere(labels == 1)
    centre = liver[len(liver) // 3]
    blob = ((z - centre[0]) * 4.0) ** 2 + ((y - centre[1]) * 1.5) ** 2 + ((x - centre[2]) * 1.5) ** 2 <= 6.0 ** 2
    probabilities[2][blob & (labels == 1)] += 0.3
    return probabilities / probabilities.sum(0, keepdims=True)


@dataclass(frozen=True)
class ExampleProject:
    """nnU-Net folders with one raw dataset (no training data needed) and the inputs of the examples."""

    root: Path
    env: dict
    cts: Path
    labels: Path
    probabilities: Path
    configure_output: str

    @property
    def dataset_json(self) -> Path:
        return Path(self.env["nnUNet_raw"]) / DATASET_NAME / "dataset.json"


@pytest.fixture(scope="module")
def example_project(tmp_path_factory, make_tiny_case) -> ExampleProject:
    """The raw dataset, configured with examples/configure_dataset.sh; CTs, label maps and probability maps."""
    root = tmp_path_factory.mktemp("examples")
    env = {name: str(root / folder) for name, folder in
           (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results"))}
    for folder in env.values():
        Path(folder).mkdir()
    raw = Path(env["nnUNet_raw"]) / DATASET_NAME
    raw.mkdir()
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 0,
                                                  "file_ending": ".nii.gz", "name": "Example"}))
    write_maps = load_example("plug_and_play").write_probability_maps
    for case in CASES:
        image, labels = make_tiny_case(int(case[-3:]))
        ct = write_image(image.astype(np.int16), root / "cts" / f"{case}_0000.nii.gz")
        write_image(labels, root / "labels" / f"{case}.nii.gz")
        write_maps(soft_probabilities(labels), ct, root / "probabilities", case)
    done = run_example(["bash", str(EXAMPLES / "configure_dataset.sh"), str(DATASET_ID)],
                       {**env, "LESIONS": "hcc cyst", "MALIGNANT": "hcc", "BENIGN": "cyst"}, timeout=120)
    return ExampleProject(root, env, root / "cts", root / "labels", root / "probabilities", done.stdout)


def test_configure_dataset_writes_the_schema(example_project):
    plus = json.loads(example_project.dataset_json.read_text())["plus"]
    assert plus["liver"] == ["liver"] and plus["lesions"] == ["hcc", "cyst"]
    assert plus["malignant"] == ["hcc"] and plus["benign"] == ["cyst"]
    assert plus["sensitivities"] == [1.0, 4.0] and plus["max_suspicious_per_case"] == 50
    assert json.loads(example_project.dataset_json.read_text())["labels"] == LABELS  # other keys kept
    printed = example_project.configure_output
    assert f"lesion schema in {example_project.dataset_json}" in printed
    assert json.loads(printed[printed.index("{", printed.index("lesion schema in")):]) == plus


def check_outputs(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict]]:
    """Every per-case and per-run file exists; the tables load in pandas and agree with the JSON and instances."""
    for case in CASES:
        for name in (f"{case}.nii.gz", f"{case}_instances.nii.gz", f"{case}.json"):
            assert (out / name).is_file(), name
    for name in ("lesions.csv", "patients.csv", "labels_itksnap.txt", "labels_slicer.ctbl", "nnunet_plus_predict.json"):
        assert (out / name).is_file(), name
    lesions, patients = pd.read_csv(out / "lesions.csv"), pd.read_csv(out / "patients.csv")
    assert {"case", "id", "label", "class", "probability", "tier", "volume_cm3", "axial_diameter_mm", "prior_hcc",
            "prior_cyst", "centroid_world_x", "bbox_z0", "hu_mean", "nnunet_class"} <= set(lesions.columns)
    assert {"case", "class", "n_lesions", "classifier", "probabilities_tumor", "probabilities_malignant",
            "livermax_hcc", "probability_source"} <= set(patients.columns)
    records = {case: json.loads((out / f"{case}.json").read_text()) for case in CASES}
    for case, record in records.items():
        ids = sorted(int(i) for i in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(
            str(out / f"{case}_instances.nii.gz")))) if i > 0)
        assert ids == [lesion["id"] for lesion in record["lesions"]]
        rows = lesions[lesions["case"] == case]
        assert rows["id"].tolist() == ids and rows["class"].tolist() == [r["class"] for r in record["lesions"]]
        assert patients.set_index("case").loc[case, "n_lesions"] == len(ids)
    return lesions, patients, records


def test_plug_and_play_on_probability_maps(example_project, tmp_path):
    out = tmp_path / "out"
    done = run_example([sys.executable, str(EXAMPLES / "plug_and_play.py"), "--from-probabilities",
                        str(example_project.probabilities), "-i", str(example_project.cts), "-o", str(out),
                        "-d", str(DATASET_ID)], example_project.env)
    lesions, patients, records = check_outputs(out)
    assert "3 lesion(s) in 2 case(s)" in done.stdout
    for case, types in CASES.items():  # nnU-Net-style argmax of the maps = the reference lesions, one each
        assert set(lesions.loc[lesions["case"] == case, "class"]) == types
        assert len(records[case]["lesions"]) == len(types)
        assert patients.set_index("case").loc[case, "class"] == "hcc"  # classifyPatient: hcc before cyst
    # probability = nnU-Net-style prior of the class (mean softmax over the lesion): the maps' 3 : 1 mix
    assert lesions["probability"].between(0.5, 0.75).all()
    assert (lesions["tier"] == "confident").all() and not patients["classifier"].any()
    record = records["case_001"]
    assert record["classifier"] is False and record["operating_point"] is None and record["rejected"] == []
    assert record["spacing"] == [4.0, 1.5, 1.5] and record["origin"] == list(ORIGIN)
    assert record["patient"]["probability_source"] == "livermax"
    assert record["patient"]["probabilities"] == record["patient"]["livermax_probabilities"]
    assert all(-100 < lesion["hu_mean"] < 60 for lesion in record["lesions"])  # -i gave the HU statistics


def test_plug_and_play_on_label_maps(example_project, tmp_path):
    out = tmp_path / "out"
    run_example([sys.executable, str(EXAMPLES / "plug_and_play.py"), "--from-segmentation",
                 str(example_project.labels), "-o", str(out), "-d", str(DATASET_ID)], example_project.env)
    lesions, _, records = check_outputs(out)
    for case, types in CASES.items():
        assert set(lesions.loc[lesions["case"] == case, "class"]) == types
    assert (lesions["probability"] == 1.0).all()  # a label map's prior is one-hot
    assert lesions["hu_mean"].isna().all()  # no -i: no HU statistics


def test_python_api_predicts_reads_and_evaluates(tiny_trained_model, tmp_path):
    images, references = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    references.mkdir()
    cases = ["tiny_000", "tiny_001"]
    for case in cases:
        shutil.copy(tiny_trained_model.images_folder / f"{case}_0000.nii.gz", images)
        shutil.copy(tiny_trained_model.labels_folder / f"{case}.nii.gz", references)
    out = tmp_path / "predictions"
    done = run_example([sys.executable, str(EXAMPLES / "python_api.py"), "-d", str(tiny_trained_model.dataset_id),
                        "-c", tiny_trained_model.configuration, "-tr", tiny_trained_model.trainer, "-f", "0", "1",
                        "--images", str(images), "--output", str(out), "--labels", str(references),
                        "--device", "cpu", "--disable-tta", "--workers", "1"],
                       {**tiny_trained_model.env, "OMP_NUM_THREADS": "1"})
    assert "predicted 2 case(s), 0 failed" in done.stdout
    for case in cases:
        for name in (f"{case}.nii.gz", f"{case}_instances.nii.gz", f"{case}.json"):
            assert (out / name).is_file(), name
    lesions, patients = pd.read_csv(out / "lesions.csv"), pd.read_csv(out / "patients.csv")
    assert {"case", "id", "class", "probability"} <= set(lesions.columns)
    assert patients["case"].tolist() == cases
    assert {"class", "n_lesions", "probabilities_tumor", "probabilities_malignant"} <= set(patients.columns)
    assert patients["n_lesions"].sum() == len(lesions)

    summary = json.loads((out / "nnunet_plus_summary.json").read_text())
    assert summary["meta"]["n_cases"] == 2 and summary["meta"]["n_missing"] == 0
    counts = summary["lesion_level"]
    n_reference = 0
    for case in cases:  # every reference lesion is a TP, FL, FN or ignored (under 0.5 cm3)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(references / f"{case}.nii.gz")))
        n_reference += len(np.unique(labels[labels > 1]))  # tiny_case: one sphere per lesion type
    assert counts["tp"] + counts["fl"] + counts["fn"] + counts["ignored_reference"] == n_reference
    assert counts["tp"] + counts["fl"] + counts["fp"] + counts["ignored_predicted"] == len(lesions)
    for key in ("precision", "recall", "f1"):
        assert counts[key] is None or 0.0 <= counts[key] <= 1.0
    assert summary["dice"]["liver"]["mean"] is None or 0.0 <= summary["dice"]["liver"]["mean"] <= 1.0
    assert summary["patient_level"]["screening"]["n"] == 2
    assert "lesion F1" in done.stdout


# ---- the shell scripts: syntax, commands and flags ---------------------------------------------------------------
_SEPARATORS = {";", "&&", "||", "|", "(", ")", "do", "then", "else", "fi", "done", "$("}


def commands_and_flags(script: Path) -> dict[str, set[str]]:
    """``{command: flags}`` for every nnU-Net / nnunet_plus command the script calls (comments and heredocs
    skipped, continuation lines joined)."""
    text = re.sub(r"<<'?(\w+)'?\n.*?\n\1\n", "\n", script.read_text(), flags=re.S)  # heredoc bodies
    text = text.replace("\\\n", " ").replace("$(", " ( ")
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.commenters = "#"
        lexer.whitespace_split = True
        command = None
        for token in lexer:
            if token in _SEPARATORS:
                command = None
            elif re.fullmatch(r"(nnunet_plus|nnUNetv2)_\w+", token):
                command = token
                found.setdefault(command, set())
            elif command is not None and re.fullmatch(r"--?[A-Za-z][\w-]*", token):
                found[command].add(token)
    return found


@lru_cache(maxsize=None)
def help_text(command: str) -> str:
    executable = BIN / command
    assert executable.is_file(), f"{command} is not installed in {BIN}"
    done = subprocess.run([str(executable), "-h"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command} -h failed: {done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.parametrize("script, expected", [
    ("configure_dataset.sh", {"nnunet_plus_configure": {"-d", "--liver", "--lesions", "--malignant", "--benign"}}),
    ("five_fold_workflow.sh", {"nnunet_plus_trainers_path": set(),
                               "nnUNetv2_plan_and_preprocess": {"-d", "-c", "--verify_dataset_integrity"},
                               "nnUNetv2_train": {"-tr", "--npz", "-device", "--c"},
                               "nnunet_plus_train_classifier": {"-tr", "-device", "--c"},
                               "nnunet_plus_predict": {"-i", "-o", "-d", "-c", "-tr", "-f", "--no-classifier"},
                               "nnunet_plus_evaluate": {"-ref", "-pred", "--baseline", "-d"},
                               "nnunet_plus_export_model": {"-d", "-c", "-tr", "-f", "-o"}}),
])
def test_shell_example_parses_and_uses_existing_flags(script, expected):
    path = EXAMPLES / script
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    used = commands_and_flags(path)
    assert set(used) == set(expected)  # the parser saw every command (a typo in a name shows up here too)
    for command, flags in used.items():
        assert expected[command] <= flags, f"{command}: expected flags {expected[command] - flags} not found"
        if command == "nnunet_plus_trainers_path":  # no options: it prints the trainers folder
            assert (BIN / command).is_file()
            continue
        text = help_text(command)
        missing = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]
        assert not missing, f"{script}: {command} has no {missing} (see {command} -h)"
