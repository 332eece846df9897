"""``nnunet_plus_demo``: the whole pipeline on the built-in phantom cohort, with the real nnU-Net commands.

Steps (each skipped when all its outputs exist, so re-running continues where it stopped; a step killed after
some of its outputs were written is redone, or continued where the command can):

1. ``nnunet_plus_make_phantom``: a synthetic NCCT cohort (``--cases`` training + ``--test-cases`` test cases) on
   a coarse grid (``DEMO_SHAPE`` at ``DEMO_SPACING``) with lesions ``--conspicuity`` times more conspicuous than
   realistic NCCT and ``DEMO_HEALTHY_FRACTION`` lesion-free subjects, so that two CPU cores can train both
   stages in minutes.
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres``.
3. a 2-fold ``splits_final.json`` (every training case gets an out-of-fold softmax from only two trainings).
4. ``nnUNetv2_train`` on folds 0 and 1 (the lesion-focused recipe: nnUNetTrainerPLUS_lesionFocus_cpuDemo on CPU,
   nnUNetTrainerPLUS_lesionFocus_10epochs on CUDA; resumes with ``--c``).
4b. the extra cohort (``--extra-cases``, default ``DEMO_EXTRA_CASES``; 0 = none): more labelled phantom patients
   (another seed, ids ``extra_0000`` on), predicted by the two trained folds (``nnUNetv2_predict
   --save_probabilities``) and never trained on by nnU-Net: more lesions for the classifier to learn from and more
   validation patients for its operating point, at the cost of one prediction instead of more stage-one training
   (issue 13 point 5; the test cases are not touched).
5. ``nnunet_plus_train_classifier`` on folds 0 and 1 (tiny preset on CPU; builds the candidate bank first, with
   the extra cohort).
6. ``nnunet_plus_predict`` on the test images: + PLUS (keeping nnU-Net's softmax), then nnU-Net alone
   (``--no-classifier --from-probabilities``: the same softmax without stage two).
7. ``nnunet_plus_evaluate --baseline``: nnU-Net alone vs + PLUS, printed, plus plots.
8. ``report.md`` in the work folder: the comparison table, plots, overlays and the time of every step.

nnUNet_raw / nnUNet_preprocessed / nnUNet_results are set inside the work folder for the child processes only.
On Linux each step's command is killed when the demo dies (also by ``kill -9`` of the demo alone), so that a
re-run never continues a step while the killed run's command still writes to it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nnunet_plus.files.atomic import atomic_path, write_json_atomic
from nnunet_plus.child_process import stop_with_parent
from nnunet_plus.classifier.trainer.fold_files import fold_complete, read_skipped
from nnunet_plus.paths import resolve_device, trainers_path

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_LiverPhantom"
CONFIGURATION = "3d_fullres"
FOLDS = (0, 1)
TRAINERS = {"cpu": "nnUNetTrainerPLUS_lesionFocus_cpuDemo", "cuda": "nnUNetTrainerPLUS_lesionFocus_10epochs"}
#: the demo cohort's grid (z, y, x): 24 x 64 x 64 voxels of 6 x 5 x 5 mm (144 x 320 x 320 mm)
DEMO_SHAPE = (24, 64, 64)
DEMO_SPACING = (6.0, 5.0, 5.0)
DEMO_CONSPICUITY = 5.0
DEMO_HEALTHY_FRACTION = 0.2
#: default training cases and PLUS classifier epochs per device (sized for ~10 minutes on 2 CPU cores)
DEMO_CASES = 48
#: extra cohort: labelled patients predicted by the trained folds for the classifier (see step 4b)
DEMO_EXTRA_CASES = 48
EXTRA_DATASET_ID = 991
EXTRA_CASE_PREFIX = "extra"
#: the extra cohort's phantom seed is the demo's seed plus this (another cohort, reproducible)
EXTRA_SEED_OFFSET = 100_000
CLASSIFIER_EPOCHS = {"cpu": 5, "cuda": 30}
#: PLUS classifier options per device: the short CPU run takes a larger step and milder class weights than
#: the paper's recipe (the default, used on CUDA), so that a few epochs on ~40 lesions move it
CLASSIFIER_OPTIONS = {"cpu": ["--lr", "1e-3", "--class-weight-power", "0.5"], "cuda": []}
CLASSIFIER_PRESETS = {"cpu": "tiny", "cuda": "paper"}
TIMINGS_FILE = "demo_timings.json"
#: what nnunet_plus_evaluate --baseline --plots writes into the evaluation folder (the plots last)
EVALUATION_FILES = ("summary.json", "summary_baseline.json", "summary_comparison.json", "plots/confusion_matrix.png",
                    "plots/froc.png", "plots/per_class.png", "plots/overview.png")
#: written when stage one gave the classifier nothing to learn from; its text says why
CLASSIFIER_SKIPPED_FILE = "classifier_skipped.txt"


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and its log."""


class Demo:
    """Runs the steps in a work folder; ``timings`` (seconds per step) persist across re-runs."""

    def __init__(self, workdir: Path, *, device: str, n_train: int, n_test: int, classifier_epochs: int,
                 num_processes: int, trainer: str | None = None, conspicuity: float = DEMO_CONSPICUITY,
                 seed: int = 0, classifier_preset: str | None = None, n_extra: int = DEMO_EXTRA_CASES) -> None:
        self.workdir = workdir.resolve()
        self.device = device
        self.seed = seed
        self.classifier_preset = classifier_preset or CLASSIFIER_PRESETS[device]
        self.n_train, self.n_test, self.n_extra = n_train, n_test, n_extra
        self.classifier_epochs = classifier_epochs
        self.conspicuity = conspicuity
        self.num_processes = num_processes
        self.trainer = trainer or TRAINERS[device]
        self.raw = self.workdir / "nnUNet_raw"
        self.preprocessed = self.workdir / "nnUNet_preprocessed"
        self.results = self.workdir / "nnUNet_results"
        self.predictions = self.workdir / "predictions"
        self.evaluation = self.workdir / "evaluation"
        self.logs = self.workdir / "logs"
        self.timings_path = self.workdir / TIMINGS_FILE
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        self.env = {**os.environ, "nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                    "nnUNet_results": str(self.results), "nnUNet_extTrainer": trainers_path(),
                    "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", str(max(1, num_processes - 1))),
                    "nnUNet_def_n_proc": os.environ.get("nnUNet_def_n_proc", str(num_processes)),
                    "nnUNet_compile": os.environ.get("nnUNet_compile", "false")}

    # ---- plumbing ------------------------------------------------------------------------------------
    def _command(self, name: str) -> str:
        path = Path(sys.executable).parent / name
        found = str(path) if path.is_file() else shutil.which(name)
        if not found:
            raise DemoError(f"command {name} not found; install nnunet_plus (pip install .) in this environment")
        return found

    def run(self, step: str, args: list[str]) -> None:
        """Run a command, streaming its output to the console and to logs/<step>.log."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{step}.log"
        command = [self._command(args[0]), *args[1:]]
        print(f"\n=== [{step}] {' '.join(command)}", flush=True)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"$ {' '.join(command)}\n")
            # the children print UTF-8 progress bars whatever this process's locale says
            process = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, encoding="utf-8", errors="replace", bufsize=1,
                                       preexec_fn=stop_with_parent(os.getpid()))
            for line in process.stdout:
                fh.write(line)
                sys.stdout.write(line)
            code = process.wait()
        if code != 0:
            raise DemoError(f"step {step} failed (exit {code}); see {log}. Re-run the demo to continue from here.")

    def timed(self, step: str, done: bool, action) -> None:
        """Run ``action`` unless ``done``; record its wall time."""
        if done:
            print(f"=== [{step}] already done, skipped", flush=True)
            return
        start = time.perf_counter()
        action()
        self.timings[step] = round(time.perf_counter() - start, 1)
        write_json_atomic(self.timings_path, self.timings)

    # ---- steps ---------------------------------------------------------------------------------------
    @property
    def dataset_raw(self) -> Path:
        return self.raw / DATASET_NAME

    @property
    def model_folder(self) -> Path:
        return self.results / DATASET_NAME / f"{self.trainer}__nnUNetPlans__{CONFIGURATION}"

    @property
    def classifier_folder(self) -> Path:
        return self.results / DATASET_NAME / f"PLUSClassifier__{self.trainer}__nnUNetPlans__{CONFIGURATION}"

    @property
    def preview(self) -> Path:
        """The phantom cohort's preview PNG (step 1)."""
        return self.workdir / "phantom_preview.png"

    @property
    def extra_cohort(self) -> Path:
        """The extra cohort's folder (imagesTr, labelsTr, predictions), outside nnUNet_raw."""
        return self.workdir / "extra_cohort" / f"Dataset{EXTRA_DATASET_ID}_LiverPhantom"

    def _phantom_options(self) -> list[str]:
        return ["--shape", *map(str, DEMO_SHAPE), "--spacing", *map(str, DEMO_SPACING),
                "--conspicuity", str(self.conspicuity), "--healthy-fraction", str(DEMO_HEALTHY_FRACTION),
                "-np", str(self.num_processes)]

    def make_phantom(self) -> None:
        self.raw.mkdir(parents=True, exist_ok=True)
        self.run("phantom", ["nnunet_plus_make_phantom", "-d", str(DATASET_ID), "-n", str(self.n_train),
                             "--n-test", str(self.n_test), "--out", str(self.raw), "--seed", str(self.seed),
                             *self._phantom_options(), "--preview", str(self.preview)])

    def make_extra_cohort(self) -> None:
        """Step 4b: the extra phantom patients and the trained folds' softmax of them."""
        parent = self.extra_cohort.parent
        parent.mkdir(parents=True, exist_ok=True)
        if not (self.extra_cohort / "dataset.json").is_file():
            self.run("extra_cohort", [
                "nnunet_plus_make_phantom", "-d", str(EXTRA_DATASET_ID), "-n", str(self.n_extra), "--n-test", "0",
                "--out", str(parent), "--seed", str(self.seed + EXTRA_SEED_OFFSET),
                "--case-prefix", EXTRA_CASE_PREFIX, "--overwrite", *self._phantom_options()])
        self.run("extra_cohort", [
            "nnUNetv2_predict", "-i", str(self.extra_cohort / "imagesTr"), "-o", str(self.extra_predictions),
            "-d", str(DATASET_ID), "-c", CONFIGURATION, "-tr", self.trainer, "-f", *map(str, FOLDS),
            "-device", self.device, "--disable_tta", "--save_probabilities", "--continue_prediction",
            "-npp", "1", "-nps", "1"])

    @property
    def extra_predictions(self) -> Path:
        return self.extra_cohort / "predictions"

    def _extra_done(self) -> bool:
        """Every extra case predicted: nnUNetv2_predict writes <case>.npz, <case>.pkl, then <case>.nii.gz (none
        atomically), so the label map's presence means the softmax files are complete."""
        images = list((self.extra_cohort / "imagesTr").glob("*_0000.nii.gz"))
        return len(images) == self.n_extra and all(
            (self.extra_predictions / f"{p.name[: -len('_0000.nii.gz')]}{suffix}").is_file()
            for p in images for suffix in (".npz", ".nii.gz"))

    @property
    def gt_segmentations(self) -> Path:
        return self.preprocessed / DATASET_NAME / "gt_segmentations"

    def _preprocessed(self) -> bool:
        """Plans written and every training label copied whole into gt_segmentations (copied last, and not
        atomically, by nnUNetv2_plan_and_preprocess)."""
        labels = list((self.dataset_raw / "labelsTr").glob("*.nii.gz"))
        return (self.preprocessed / DATASET_NAME / "nnUNetPlans.json").is_file() and bool(labels) and all(
            (self.gt_segmentations / p.name).is_file()
            and (self.gt_segmentations / p.name).stat().st_size == p.stat().st_size for p in labels)

    def plan_and_preprocess(self) -> None:
        for label in (self.dataset_raw / "labelsTr").glob("*.nii.gz"):
            copy = self.gt_segmentations / label.name
            if copy.is_file() and copy.stat().st_size != label.stat().st_size:
                copy.unlink()  # cut short by a kill; nnU-Net copies only labels newer than the copy, not this one
        self.run("plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION,
                                         "-np", str(self.num_processes)])

    def write_two_fold_split(self) -> None:
        from nnunet_plus.classifier.splits import two_fold_split

        cases = [p.name[: -len(".nii.gz")] for p in (self.dataset_raw / "labelsTr").glob("*.nii.gz")]
        write_json_atomic(self.preprocessed / DATASET_NAME / "splits_final.json", two_fold_split(cases))

    def train_fold(self, fold: int) -> None:
        # --c: from checkpoint_latest, or (checkpoint_final: killed in the validation) only the validation again
        folder = self.model_folder / f"fold_{fold}"
        resume = ["--c"] if any((folder / name).is_file() for name in ("checkpoint_latest.pth",
                                                                        "checkpoint_final.pth")) else []
        self.run(f"nnunet_fold{fold}", ["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, str(fold), "-tr",
                                        self.trainer, "-device", self.device, *resume])

    @property
    def classifier_skipped(self) -> str | None:
        """Why the PLUS stage was skipped (stage one found no lesion candidate), or None."""
        marker = self.workdir / CLASSIFIER_SKIPPED_FILE
        return marker.read_text().strip() if marker.is_file() else None

    def train_classifier(self, fold: int) -> None:
        """Train the fold's classifier; when nnU-Net found no lesion candidate to learn from (the command then
        writes ``fold_k/skipped.json`` and fails), record why in ``classifier_skipped.txt`` (the demo then reports
        nnU-Net alone) instead of failing."""
        try:
            self._train_classifier(fold)
        except DemoError:
            reason = read_skipped(self.classifier_folder / f"fold_{fold}")
            if reason is None:
                raise
            with atomic_path(self.workdir / CLASSIFIER_SKIPPED_FILE) as tmp:
                tmp.write_text(reason + "\n")
            print(f"=== PLUS classifier skipped: {reason}", flush=True)

    def _classifier_trained(self, fold: int) -> bool:
        """The fold's last classifier run finished (its ``history.json`` says done, the command's last write)."""
        return fold_complete(self.classifier_folder / f"fold_{fold}")

    def _train_classifier(self, fold: int) -> None:
        # --c: from checkpoint_latest, or (checkpoint_final: killed after the training) the operating point and the
        # validation again
        folder = self.classifier_folder / f"fold_{fold}"
        resume = ["--c"] if any((folder / name).is_file() for name in ("checkpoint_latest.pth",
                                                                        "checkpoint_final.pth")) else []
        self.run(f"classifier_fold{fold}", [
            "nnunet_plus_train_classifier", str(DATASET_ID), CONFIGURATION, str(fold), "-tr", self.trainer,
            "-device", self.device, "--preset", self.classifier_preset,
            "--epochs", str(self.classifier_epochs), *CLASSIFIER_OPTIONS[self.device], "-np", str(self.num_processes),
            *(["--extra-cases", str(self.extra_cohort)] if self.n_extra else []), *resume])

    def predict(self, name: str, extra: list[str]) -> None:
        self.run(f"predict_{name}", [
            "nnunet_plus_predict", "-i", str(self.dataset_raw / "imagesTs"), "-o", str(self.predictions / name),
            "-d", str(DATASET_ID), "-c", CONFIGURATION, "-tr", self.trainer, "-f", *map(str, FOLDS),
            "-device", self.device, "--disable_tta", "--continue_prediction", "-npp", "1", "-nps", "1", *extra])

    def predict_nnunet_alone(self) -> None:
        """nnU-Net alone: the + PLUS run's saved nnU-Net softmax post-processed without the classifier (the same
        outputs as a second sliding-window prediction, without running the network again); the full prediction
        when that softmax is missing."""
        if all((self.predictions / "plus" / f"{case}.npz").is_file() for case in self.test_cases):
            self.predict("nnunet", ["--no-classifier", "--from-probabilities", str(self.predictions / "plus")])
        else:
            self.predict("nnunet", ["--no-classifier"])

    def evaluate(self) -> None:
        self.run("evaluate", [
            "nnunet_plus_evaluate", "-ref", str(self.dataset_raw / "labelsTs"), "-pred", str(self.predictions / "plus"),
            "--baseline", str(self.predictions / "nnunet"), "-d", str(DATASET_ID), "--min-volume", "0",
            "-o", str(self.evaluation / "summary.json"), "--plots", str(self.evaluation / "plots"),
            "-np", str(self.num_processes)])

    def _evaluated(self) -> bool:
        return all((self.evaluation / name).is_file() for name in EVALUATION_FILES)

    @property
    def test_cases(self) -> list[str]:
        """The held-out test cases' ids (``imagesTs/<case>_0000.nii.gz``)."""
        return [p.name[: -len("_0000.nii.gz")] for p in (self.dataset_raw / "imagesTs").glob("*_0000.nii.gz")]

    def _predicted_all(self, name: str) -> bool:
        folder = self.predictions / name
        return (folder / "patients.csv").is_file() and all((folder / f"{c}.json").is_file() for c in self.test_cases)

    def run_all(self) -> Path:
        self.timed("phantom", (self.dataset_raw / "dataset.json").is_file(), self.make_phantom)
        if not self.preview.is_file():  # a run killed after the dataset was in place, before its preview was drawn
            from nnunet_plus.phantom.preview import write_preview

            write_preview(self.dataset_raw, self.preview)
        self.timed("plan_and_preprocess", self._preprocessed(), self.plan_and_preprocess)
        if not (self.preprocessed / DATASET_NAME / "splits_final.json").is_file():
            self.write_two_fold_split()
        for fold in FOLDS:
            done = (self.model_folder / f"fold_{fold}" / "validation" / "plus_summary.json").is_file()
            self.timed(f"nnunet_fold{fold}", done, lambda f=fold: self.train_fold(f))
        if self.n_extra:
            self.timed("extra_cohort", self._extra_done(), self.make_extra_cohort)
        for fold in FOLDS:
            done = self._classifier_trained(fold)
            self.timed(f"classifier_fold{fold}", done or self.classifier_skipped is not None,
                       lambda f=fold: self.train_classifier(f))
        plus_options = ["--overlays", "--save_probabilities"] + (["--no-classifier"] if self.classifier_skipped else [])
        self.timed("predict_plus", self._predicted_all("plus"), lambda: self.predict("plus", plus_options))
        self.timed("predict_nnunet", self._predicted_all("nnunet"), self.predict_nnunet_alone)
        self.timed("evaluate", self._evaluated(), self.evaluate)
        from nnunet_plus.demo_report import write_report

        report = write_report(self)
        print(f"\nreport: {report}\ntotal time of the steps: {sum(self.timings.values()):.0f} s", flush=True)
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet_plus_demo",
        description="Generate a phantom liver CT cohort, train nnUNetTrainerPLUS (2 folds) and the PLUS classifier, "
                    "predict the test cases and compare nnU-Net alone with nnU-Net + PLUS. Re-run to continue.")
    parser.add_argument("--workdir", type=Path, default=Path("nnunet_plus_demo"),
                        help="work folder (default: ./nnunet_plus_demo); nnU-Net's folders are created inside")
    parser.add_argument("-device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--cases", type=int, default=DEMO_CASES, help=f"training cases (default: {DEMO_CASES})")
    parser.add_argument("--test-cases", type=int, default=20, help="held-out test cases (default: 20)")
    parser.add_argument("--extra-cases", type=int, default=DEMO_EXTRA_CASES,
                        help="extra phantom patients (another seed) predicted by the trained nnU-Net folds, for the "
                             "PLUS classifier only (default: %(default)s; 0 = none)")
    parser.add_argument("--classifier-epochs", type=int, default=None,
                        help="PLUS classifier epochs (default: 5 on cpu, 30 on cuda)")
    parser.add_argument("-tr", dest="trainer", default=None,
                        help="nnU-Net trainer (default: nnUNetTrainerPLUS_lesionFocus_cpuDemo on cpu, "
                             "nnUNetTrainerPLUS_lesionFocus_10epochs on cuda; nnUNetTrainerPLUS_cpuTiny_2epochs for a "
                             "smoke test)")
    parser.add_argument("--conspicuity", type=float, default=DEMO_CONSPICUITY,
                        help="phantom lesion contrast x C and noise / C (default: %(default)s; 1 = realistic, subtle "
                             "NCCT lesions that a few minutes of training do not learn)")
    parser.add_argument("--seed", type=int, default=0,
                        help="phantom cohort seed (default: 0); another seed draws another cohort")
    parser.add_argument("--classifier-preset", choices=("tiny", "paper"), default=None,
                        help="PLUS classifier preset (default: tiny on cpu, paper on cuda)")
    parser.add_argument("-np", dest="num_processes", type=int, default=min(os.cpu_count() or 1, 4),
                        help="worker processes (default: CPU count, at most 4)")
    args = parser.parse_args(argv)
    if args.cases < 4 or args.test_cases < 1 or args.extra_cases < 0:
        print("nnunet_plus_demo: error: need --cases >= 4 (two folds), --test-cases >= 1 and --extra-cases >= 0",
              file=sys.stderr)
        return 2
    try:
        resolve_device(args.device)
    except ValueError as error:
        print(f"nnunet_plus_demo: error: {error}", file=sys.stderr)
        return 2
    demo = Demo(args.workdir, device=args.device, n_train=args.cases, n_test=args.test_cases,
                classifier_epochs=args.classifier_epochs or CLASSIFIER_EPOCHS[args.device],
                num_processes=args.num_processes, trainer=args.trainer, conspicuity=args.conspicuity,
                seed=args.seed, classifier_preset=args.classifier_preset, n_extra=args.extra_cases)
    try:
        demo.run_all()
    except DemoError as exc:
        print(f"nnunet_plus_demo: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
