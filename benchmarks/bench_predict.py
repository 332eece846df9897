"""Benchmark (issue 6): nnunet_plus_predict vs nnUNetv2_predict vs the naive two-step pipeline, in one run.

Three ways to get from a folder of CTs to results, each run as its own command (wall time of the whole
command; peak memory of its process tree = summed PSS, i.e. shared library pages counted once, sampled every
50 ms):

1. ``nnunet_plus_predict``: full pipeline (nnU-Net, multi-sensitivity, seg2det, LiverMax, the PLUS
   classifier on every candidate; label map, instance map and JSON per case, tables);
2. ``nnUNetv2_predict``: nnU-Net's segmentation only;
3. naive: ``nnUNetv2_predict --save_probabilities`` and then a script running our post-processing on each
   ``.npz`` (``analyse_case`` + JSON), what a user would write without nnunet_plus_predict.

Targets: time(1) <= 1.15 x time(2), time(1) <= 0.6 x time(3), peak memory(1) <= 1.2 x peak memory(2).

Setup (cached in ``--workdir``): a phantom cohort (``nnunet_plus.phantom``) at the training grid, nnU-Net
planning / preprocessing, folds 0 and 1 of the CPU trainer variant (``nnUNetTrainerPLUS_cpuTiny_2epochs`` by
default: same network and inference cost as ``nnUNetTrainerPLUS_cpuTiny``, trained in a minute) and fold 0 of
the PLUS classifier (``--classifier-preset``, ``--classifier-epochs``; fold 1 of nnU-Net gives it out-of-fold
candidates; ``--no-classifier`` skips it); the test cases are a second phantom cohort
covering the same field of view on a finer grid (CT-like: the network runs at the planned spacing, the
outputs are written at the input's).

    python benchmarks/bench_predict.py --workdir /tmp/bench_predict [--n-cases 6] [--write-results]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Prediction (issue 6)"
TRAIN_ID, TEST_ID = 961, 962
TARGETS = {"time_vs_nnunet": 1.15, "time_vs_naive": 0.6, "memory_vs_nnunet": 1.2}


# ---- measuring ------------------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _process_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between the processes sharing them), RSS where the kernel
    has no smaps_rollup; 0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    except OSError:
        return 0
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _tree_bytes(root: int) -> int:
    children, total, todo = _children_map(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        total += _process_bytes(pid)
    return total


def measure(command: list[str], env: dict, log: Path) -> tuple[float, int]:
    """(wall seconds, peak memory of the process tree in bytes: summed PSS) of a command; raises if it fails."""
    peak = 0
    with open(log, "w") as fh:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=fh, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_bytes(process.pid))
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {code}; see {log}")
    return elapsed, peak


# ---- setup ------------------------------------------------------------------------------------------------
def _env(workdir: Path) -> dict:
    from nnunet_plus.paths import trainers_path

    return {**os.environ, "nnUNet_raw": str(workdir / "raw"), "nnUNet_preprocessed": str(workdir / "preprocessed"),
            "nnUNet_results": str(workdir / "results"), "nnUNet_extTrainer": trainers_path(),
            "nnUNet_compile": "false", "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "2")}


def setup(workdir: Path, args, env: dict) -> Path:
    """Train the model once (cached) and generate the test cohort; returns the test images folder."""
    from nnunet_plus.phantom import make_phantom_dataset

    bin_dir = Path(sys.executable).parent
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    raw = workdir / "raw"
    train = next(raw.glob(f"Dataset{TRAIN_ID}_*"), None) if raw.is_dir() else None
    if train is None:
        make_phantom_dataset(TRAIN_ID, args.n_train, n_test=1, shape=args.train_shape, spacing=args.train_spacing,
                             out_dir=raw, num_processes=2, quiet=True)
    model = next((workdir / "results").glob(f"Dataset{TRAIN_ID}_*/{args.trainer}__nnUNetPlans__3d_fullres"), None) \
        if (workdir / "results").is_dir() else None
    log = workdir / "setup.log"
    if model is None or not all((model / f"fold_{f}" / "checkpoint_final.pth").is_file() for f in (0, 1)):
        commands = [[str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(TRAIN_ID), "-c", "3d_fullres",
                     "-np", "2"]] if model is None else []
        commands += [[str(bin_dir / "nnUNetv2_train"), str(TRAIN_ID), "3d_fullres", str(fold), "-tr", args.trainer,
                      "-device", "cpu"] for fold in (0, 1)]
        for command in commands:
            print("setup:", " ".join(command), flush=True)
            measure(command, env, log.with_suffix(f".{Path(command[0]).name}.log"))
            if "plan_and_preprocess" in command[0]:
                write_two_fold_split(workdir)
    if not args.no_classifier and not classifier_checkpoint(workdir, args).is_file():
        command = [str(bin_dir / "nnunet_plus_train_classifier"), str(TRAIN_ID), "3d_fullres", "0", "-tr",
                   args.trainer, "-device", "cpu", "--preset", args.classifier_preset, "--epochs",
                   str(args.classifier_epochs), "--quiet"]
        print("setup:", " ".join(command), flush=True)
        measure(command, env, log.with_suffix(".classifier.log"))
    test = next(raw.glob(f"Dataset{TEST_ID}_*"), None)
    fov = [n * s for n, s in zip(args.train_shape, args.train_spacing)]
    spacing = [f / n for f, n in zip(fov, args.shape)]
    if test is not None and json.loads((test / "dataset.json").read_text())["phantom"]["shape"] != args.shape:
        shutil.rmtree(test)
        test = None
    if test is None:
        test = make_phantom_dataset(TEST_ID, 1, n_test=args.n_cases, seed=1, shape=args.shape, spacing=spacing,
                                    out_dir=raw, num_processes=2, quiet=True)
    images = test / "imagesTs"
    if len(list(images.glob("*_0000.nii.gz"))) != args.n_cases:
        raise RuntimeError(f"{images} does not hold {args.n_cases} cases; delete {test} and rerun")
    return images


def write_two_fold_split(workdir: Path) -> None:
    """Folds 0 and 1 split the training cases in two, so that their validations give every case an out-of-fold
    softmax for the classifier's candidate bank."""
    from nnunet_plus.classifier.splits import two_fold_split
    from nnunet_plus.files.atomic import write_json_atomic

    raw = next((workdir / "raw").glob(f"Dataset{TRAIN_ID}_*"))
    cases = [p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz")]
    write_json_atomic(workdir / "preprocessed" / raw.name / "splits_final.json", two_fold_split(cases))


def classifier_checkpoint(workdir: Path, args) -> Path:
    """Where fold 0 of the benchmark's PLUS classifier lives (nnunet_plus_train_classifier's layout)."""
    folder = next((workdir / "results").glob(f"Dataset{TRAIN_ID}_*"))
    return folder / f"PLUSClassifier__{args.trainer}__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth"


# ---- the naive second step ----------------------------------------------------------------------------------
def naive_postprocess(folder: Path, dataset_json: Path, images: Path) -> None:
    """What a user scripts after ``nnUNetv2_predict --save_probabilities``: our analysis on every .npz."""
    import pickle

    import numpy as np
    import SimpleITK as sitk

    from nnunet_plus.case_analysis import analyse_case
    from nnunet_plus.schema import LesionSchema
    from nnunet_plus.files.atomic import write_json_atomic

    schema = LesionSchema.from_dataset_json(dataset_json)
    for npz in sorted(folder.glob("*.npz")):
        with np.load(npz) as data:
            probabilities = data["probabilities"]
        with open(npz.with_suffix(".pkl"), "rb") as fh:
            properties = pickle.load(fh)
        stuff = properties["sitk_stuff"]
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(images / f"{npz.stem}_0000.nii.gz"))).astype(np.float32)
        analysis = analyse_case(probabilities, schema, image=image, spacing=properties["spacing"],
                                origin=stuff["origin"], direction=stuff["direction"])
        write_json_atomic(folder / f"{npz.stem}_lesions.json", {"case": npz.stem, **analysis.to_json(schema)})


# ---- report -------------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
    except (OSError, AttributeError):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU ({cpu}), {memory:.0f} GiB RAM, {gpu}, Python {platform.python_version()}, " \
           f"torch {torch.__version__}"


def write_results(text: str) -> None:
    """Replace (or append) only this benchmark's section of RESULTS.md, atomically."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results_md import write_section

    write_section(SECTION, text, results=RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nnunet_plus_bench_predict"),
                        help="data, model and outputs (kept: the trained model is reused)")
    parser.add_argument("--n-cases", type=int, default=6, help="test cases (default 6)")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 192, 192], help="test grid z y x")
    parser.add_argument("--train-shape", type=int, nargs=3, default=[32, 96, 96], help="training grid z y x")
    parser.add_argument("--train-spacing", type=float, nargs=3, default=[5.0, 3.0, 3.0], help="training mm z y x")
    parser.add_argument("--n-train", type=int, default=6, help="training cases (default 6)")
    parser.add_argument("--trainer", default="nnUNetTrainerPLUS_cpuTiny_2epochs",
                        help="CPU trainer variant (default: the 2-epoch one: the network's cost per case does not "
                             "depend on how long it was trained)")
    parser.add_argument("--classifier-preset", choices=("tiny", "paper"), default="tiny",
                        help="PLUS classifier preset (default tiny, the CPU size)")
    parser.add_argument("--classifier-epochs", type=int, default=2, help="PLUS classifier epochs (default 2)")
    parser.add_argument("--no-classifier", action="store_true", help="run nnunet_plus_predict without a classifier")
    parser.add_argument("-npp", type=int, default=2, help="-npp for every command (default 2)")
    parser.add_argument("-nps", type=int, default=2, help="-nps for every command (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method, the fastest is kept")
    parser.add_argument("--write-results", action="store_true", help=f"write {SECTION!r} of {RESULTS}")
    parser.add_argument("--naive-postprocess", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dataset-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.naive_postprocess is not None:
        naive_postprocess(args.naive_postprocess, args.dataset_json, args.images)
        return 0

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = _env(workdir)
    images = setup(workdir, args, env)
    model = next((workdir / "results").glob(f"Dataset{TRAIN_ID}_*/{args.trainer}__nnUNetPlans__3d_fullres"))
    common = ["-i", str(images), "-d", str(TRAIN_ID), "-c", "3d_fullres", "-tr", args.trainer, "-f", "0",
              "-device", "cpu", "-npp", str(args.npp), "-nps", str(args.nps)]
    python = sys.executable
    bin_dir = Path(python).parent
    methods = {
        "nnunet_plus_predict": [[python, "-m", "nnunet_plus.predict.cli", *common, "-o", "{out}",
                                 "--disable_progress_bar", *(["--no-classifier"] if args.no_classifier else [])]],
        "nnUNetv2_predict": [[str(bin_dir / "nnUNetv2_predict"), *common, "-o", "{out}", "--disable_progress_bar"]],
        "naive (nnUNetv2_predict --save_probabilities + post-processing)": [
            [str(bin_dir / "nnUNetv2_predict"), *common, "-o", "{out}", "--save_probabilities",
             "--disable_progress_bar"],
            [python, str(Path(__file__).resolve()), "--naive-postprocess", "{out}", "--dataset-json",
             str(model / "dataset.json"), "--images", str(images)]],
    }
    results: dict[str, tuple[float, int]] = {}
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        for index, (name, commands) in enumerate(methods.items()):
            out = workdir / "outputs" / f"method{index}"
            if out.exists():
                shutil.rmtree(out)
            total_time, peak = 0.0, 0
            for step, command in enumerate(commands):
                command = [c.replace("{out}", str(out)) for c in command]
                seconds, memory = measure(command, env, workdir / f"method{index}_step{step}.log")
                loads.append(os.getloadavg()[0])
                total_time, peak = total_time + seconds, max(peak, memory)
            best = results.get(name)
            if best is None or total_time < best[0]:
                results[name] = (total_time, peak)
            print(f"[{repeat + 1}/{args.repeats}] {name}: {total_time:.1f} s, peak {peak / 2 ** 20:.0f} MiB",
                  flush=True)

    ours, nnunet, naive = (results[name] for name in methods)
    ratios = {"time_vs_nnunet": ours[0] / nnunet[0], "time_vs_naive": ours[0] / naive[0],
              "memory_vs_nnunet": ours[1] / nnunet[1]}
    records = [json.loads(p.read_text()) for p in (workdir / "outputs" / "method0").glob("*.json")
               if p.name != "nnunet_plus_predict.json"]
    n_lesions = sum(len(r["lesions"]) for r in records)
    n_candidates = sum(len(r["lesions"]) + len(r.get("rejected", [])) for r in records)
    if args.no_classifier:
        classifier = ("No PLUS classifier (`--no-classifier`): nnunet_plus_predict reports nnU-Net's lesions "
                      "(the classifier's cost is measured by bench_classifier.py).")
    else:
        if not all(r.get("classifier") for r in records):
            raise RuntimeError("nnunet_plus_predict did not use the PLUS classifier; see the method0 logs")
        classifier = (f"PLUS classifier fold 0 ({args.classifier_preset} preset, {args.classifier_epochs} "
                      f"epochs) on all {n_candidates} candidates (f = 4, capped per case), {n_lesions} kept.")
    lines = [SECTION, "",
             f"Command: `python benchmarks/bench_predict.py --n-cases {args.n_cases} --shape {' '.join(map(str, args.shape))}"
             f" --trainer {args.trainer} -npp {args.npp} -nps {args.nps} --repeats {args.repeats}"
             + (" --no-classifier`" if args.no_classifier else f" --classifier-preset {args.classifier_preset}"
                f" --classifier-epochs {args.classifier_epochs}`"),
             f"Machine: {machine()}; 1-minute load average {min(loads):.1f}-{max(loads):.1f} during the runs "
             f"(the benchmark's own processes included); {args.repeats} run(s) per method, the fastest kept",
             f"Data: {args.n_cases} phantom CTs of {' x '.join(map(str, args.shape))} voxels (network at "
             f"{' x '.join(map(str, args.train_shape))}, planned spacing), {args.trainer} fold 0, CPU, "
             f"{n_lesions} reported lesions in total. {classifier}",
             "", "| method | wall time (s) | peak memory (MiB, PSS of the process tree) |", "| --- | ---: | ---: |"]
    for name, (seconds, memory) in results.items():
        lines.append(f"| {name} | {seconds:.1f} | {memory / 2 ** 20:.0f} |")
    lines += ["", "| ratio | measured | target | met |", "| --- | ---: | ---: | --- |"]
    labels = {"time_vs_nnunet": "time nnunet_plus_predict / nnUNetv2_predict",
              "time_vs_naive": "time nnunet_plus_predict / naive pipeline",
              "memory_vs_nnunet": "peak memory nnunet_plus_predict / nnUNetv2_predict"}
    for key, value in ratios.items():
        lines.append(f"| {labels[key]} | {value:.2f} | <= {TARGETS[key]} | "
                     f"{'yes' if value <= TARGETS[key] else 'NO'} |")
    report = "\n".join(lines)
    print("\n" + report)
    if args.write_results:
        write_results(report)
        print(f"\nwrote {SECTION!r} into {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
