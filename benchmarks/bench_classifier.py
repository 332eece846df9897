"""Throughput of the PLUS classifier vs a plain lesion-only 3D ResNet (issue 5, item 5).

Times one optimisation step (forward, PLUS loss, backward, AdamW) and inference (eval, no grad) of

* ``PLUS``: :class:`nnunet_plus.classifier.model.PLUSClassifier` (E^S + E^H + HDA + GPR + head);
* ``lesion-only``: the simplest peer, the same lesion encoder E^S on the lesion crop alone, global average
  pooling and a linear head over the same ``C + 1`` classes, trained with the same loss;

for the ``tiny`` and ``paper`` presets, on CPU and (when available) CUDA with mixed precision (fp16
autocast + GradScaler for training, fp16 autocast for inference). Inputs are random tensors shaped like
real batches: ``--patients`` patients (paper: 2) with ``--lesions`` candidates each, lesion ROI
``16 x 64 x 64`` (z, y, x; the paper's 64x64x16) with one image channel + the mask channel, liver input
``32 x 64 x 64`` (one channel), 9 lesion classes (PLUS's nine types) + "not a lesion".

Throughput is lesions per second, from the best (shortest) of the timed runs, which is the figure least
disturbed by other processes on a shared machine; the 1-minute load average is printed with the results.
The cost of HDA + GPR is reported as ``PLUS time / lesion-only time`` per lesion (it includes the liver
encoder, which runs once per patient and so is shared by that patient's lesions), and for inference a
breakdown of one PLUS forward into lesion encoder, liver encoder and HDA + fusion + head.

Usage::

    python benchmarks/bench_classifier.py                  # quick: < 3 min on a 2-core CPU
    python benchmarks/bench_classifier.py --no-quick       # more iterations
    python benchmarks/bench_classifier.py --presets tiny --devices cpu --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from typing import Callable

import torch
from torch import nn

from nnunet_plus.classifier.encoders import ResNetEncoder3d, encoder_preset
from nnunet_plus.classifier.loss import plus_loss
from nnunet_plus.classifier.model import PLUSClassifier, prior_distribution
from nnunet_plus.files.atomic import write_json_atomic

ROI = (16, 64, 64)
LIVER = (32, 64, 64)
NUM_CLASSES = 9
MALIGNANT, BENIGN = [0, 1, 2, 3], [4, 5, 6, 7, 8]


class LesionOnlyBaseline(nn.Module):
    """Lesion encoder + global average pooling + linear head (ignores the prior and the liver)."""

    def __init__(self, in_channels: int, num_lesion_classes: int, *, preset: str) -> None:
        super().__init__()
        self.encoder = ResNetEncoder3d(in_channels + 1, **encoder_preset(preset))
        self.head = nn.Linear(self.encoder.out_channels, num_lesion_classes + 1)

    def forward(self, lesion_crops: torch.Tensor, priors: torch.Tensor, liver: torch.Tensor,
                lesion_to_patient: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(lesion_crops).mean(dim=(2, 3, 4)))


def make_batch(patients: int, lesions: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch of ``patients`` patients with ``lesions`` candidates each."""
    g = torch.Generator().manual_seed(seed)
    n = patients * lesions
    crops = torch.randn(n, 2, *ROI, generator=g)
    crops[:, 1] = (crops[:, 1] > 0).float()
    targets = torch.randint(0, NUM_CLASSES + 1, (n,), generator=g)
    index = torch.arange(patients).repeat_interleave(lesions)
    malignant = torch.zeros(patients).scatter_reduce(0, index, (targets < len(MALIGNANT)).float(), "amax")
    tumor = torch.zeros(patients).scatter_reduce(0, index, (targets < NUM_CLASSES).float(), "amax")
    batch = {"lesion_crops": crops, "priors": torch.softmax(torch.randn(n, NUM_CLASSES + 1, generator=g), 1)[:, :-1],
             "liver": torch.randn(patients, 1, *LIVER, generator=g), "lesion_to_patient": index, "targets": targets,
             "patient_malignant": malignant, "patient_tumor": tumor}
    return {k: v.to(device) for k, v in batch.items()}


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["lesion_crops"], batch["priors"], batch["liver"], batch["lesion_to_patient"])


def _timeit(fns: dict[str, Callable[[], None]], device: torch.device, warmup: int,
            iters: int) -> dict[str, list[float]]:
    """Run every function ``warmup`` times, then time them ``iters`` times, interleaved (A, B, A, B, ...) so
    that a load change on a shared machine hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _train_step(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> Callable[[], None]:
    """One AdamW step of ``model`` on ``batch`` with the PLUS loss (fp16 autocast + GradScaler on CUDA)."""
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    distill = isinstance(model, PLUSClassifier) and model.needs_prior_target

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device):
            logits = _forward(model, batch)
        loss = plus_loss(logits, batch["targets"], batch["lesion_to_patient"], batch["patient_malignant"],
                         batch["patient_tumor"], num_patients=batch["liver"].shape[0], malignant_classes=MALIGNANT,
                         benign_classes=BENIGN,
                         distill_targets=prior_distribution(batch["priors"]) if distill else None)["total"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _inference(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> Callable[[], None]:
    model.to(device)

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(device):
            _forward(model, batch)

    return infer


def bench_models(models: dict[str, nn.Module], batch: dict[str, torch.Tensor], device: torch.device, *,
                 warmup: int, iters: int) -> dict[str, dict[str, float]]:
    """Seconds per training step and per inference forward (best of the timed runs) of each model."""
    train = _timeit({name: _train_step(m, batch, device) for name, m in models.items()}, device, warmup, iters)
    infer = _timeit({name: _inference(m, batch, device) for name, m in models.items()}, device, warmup,
                    max(iters, 2))
    return {name: {"train_s": min(train[name]), "infer_s": min(infer[name])} for name in models}


def breakdown(model: PLUSClassifier, batch: dict[str, torch.Tensor], device: torch.device, *, warmup: int,
              iters: int) -> dict[str, float]:
    """Inference seconds (best run) of the lesion encoder, the liver encoder and HDA + fusion + head."""
    model.to(device).eval()
    with torch.inference_mode(), _autocast(device):
        lesion_map = model.lesion_encoder(batch["lesion_crops"])
        liver_map = model.liver_encoder(batch["liver"])
        prior = prior_distribution(batch["priors"])
        parts = {
            "lesion_encoder_s": lambda: model.lesion_encoder(batch["lesion_crops"]),
            "liver_encoder_s": lambda: model.liver_encoder(batch["liver"]),
            "hda_fusion_head_s": lambda: model.head(model.fusion(
                model.hda(lesion_map, liver_map, batch["lesion_to_patient"]), prior)),
        }
        return {name: min(times) for name, times in _timeit(parts, device, warmup, max(iters, 2)).items()}


def schedule(preset: str, device: torch.device, quick: bool) -> tuple[int, int]:
    """(warmup, timed iterations) for one preset on one device."""
    if device.type == "cuda":
        return (3, 10) if quick else (5, 50)
    if preset == "paper":
        return (0, 1) if quick else (1, 3)
    return (2, 5) if quick else (3, 20)


def machine() -> dict[str, str]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "torch_threads": str(torch.get_num_threads())}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = f"{names[0]} ({len(names)} logical cores)"
    with contextlib.suppress(OSError):
        info["load_average_1min"] = f"{os.getloadavg()[0]:.1f}"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--devices", nargs="+", default=None, choices=["cpu", "cuda"],
                        help="default: cpu, plus cuda when available")
    parser.add_argument("--patients", type=int, default=2, help="patients per batch (paper: 2)")
    parser.add_argument("--lesions", type=int, default=4, help="candidates per patient")
    parser.add_argument("--fusion", default="gpr", choices=["gpr", "none", "distill", "gated", "weighted"])
    parser.add_argument("--quick", action=argparse.BooleanOptionalAction, default=True,
                        help="few iterations (default; < 3 min on a 2-core CPU); --no-quick for more")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.lesions < 1:
        parser.error("--patients and --lesions must be >= 1")
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda given but no CUDA GPU is available")
    torch.backends.cudnn.benchmark = True
    info = machine()
    print(f"machine: {info}")
    print(f"batch: {args.patients} patients x {args.lesions} lesions, ROI {ROI} (z, y, x), liver {LIVER}, "
          f"fusion {args.fusion}, {'quick' if args.quick else 'full'} schedule")
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        batch = make_batch(args.patients, args.lesions, device)
        n = args.patients * args.lesions
        for preset in args.presets:
            warmup, iters = schedule(preset, device, args.quick)
            torch.manual_seed(0)
            plus = PLUSClassifier(1, NUM_CLASSES, preset=preset, fusion=args.fusion)
            peer = LesionOnlyBaseline(1, NUM_CLASSES, preset=preset)
            row = {"device": device_name, "preset": preset, "warmup": warmup, "iters": iters, "lesions_per_batch": n,
                   "plus_params": sum(p.numel() for p in plus.parameters()),
                   "peer_params": sum(p.numel() for p in peer.parameters())}
            for name, times in bench_models({"plus": plus, "peer": peer}, batch, device, warmup=warmup,
                                            iters=iters).items():
                row[f"{name}_train_lesions_per_s"] = n / times["train_s"]
                row[f"{name}_infer_lesions_per_s"] = n / times["infer_s"]
                print(f"  {device_name} {preset} {name}: train {times['train_s']:.3f} s/step, "
                      f"infer {times['infer_s']:.3f} s/batch", flush=True)
            row["train_cost_ratio"] = row["peer_train_lesions_per_s"] / row["plus_train_lesions_per_s"]
            row["infer_cost_ratio"] = row["peer_infer_lesions_per_s"] / row["plus_infer_lesions_per_s"]
            row["infer_breakdown_s"] = breakdown(plus, batch, device, warmup=min(warmup, 1), iters=iters)
            with contextlib.suppress(OSError):
                row["load_average_1min"] = round(os.getloadavg()[0], 1)
            rows.append(row)
            del plus, peer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print("| device | preset | load | params PLUS / peer | train lesions/s PLUS / peer | cost ratio | "
          "infer lesions/s PLUS / peer | cost ratio | infer split: lesion enc / liver enc / HDA+GPR+head |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        split = r["infer_breakdown_s"]
        total = sum(split.values())
        shares = " / ".join(f"{100 * v / total:.0f}%" for v in split.values())
        print(f"| {r['device']} | {r['preset']} | {r.get('load_average_1min', '?')} | "
              f"{r['plus_params'] / 1e6:.2f} M / {r['peer_params'] / 1e6:.2f} M | "
              f"{r['plus_train_lesions_per_s']:.2f} / {r['peer_train_lesions_per_s']:.2f} | "
              f"{r['train_cost_ratio']:.2f}x | {r['plus_infer_lesions_per_s']:.2f} / "
              f"{r['peer_infer_lesions_per_s']:.2f} | {r['infer_cost_ratio']:.2f}x | {shares} |")
    if args.json:
        write_json_atomic(args.json, {"machine": info, "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
