"""Thin variants of nnUNetTrainerPLUS, nnU-Net style: training length, the lesion-focused recipe's lengths and
CPU-sized trainers.

``nnUNetTrainerPLUS_cpuTiny*`` are for tests and smoke runs: a network with a few features per stage, nnU-Net's
recipe and few iterations; they learn no phantom lesion. ``nnUNetTrainerPLUS_lesionFocus_cpuDemo`` (the CPU
demo's trainer) adds the lesion-focused recipe and lesion-centred patches (half of each batch; the other half are
nnU-Net's random crops, so that it also learns air and body), which is what lets ~1000 CPU iterations find phantom
lesions (benchmarks/RESULTS.md, "Stage one on the phantom"). None of them is for real training.
"""
from __future__ import annotations

import numpy as np
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_plus.trainers.nnUNetTrainerPLUS import nnUNetTrainerPLUS
from nnunet_plus.trainers.nnUNetTrainerPLUS_lesionFocus import nnUNetTrainerPLUS_lesionFocus


class nnUNetTrainerPLUS_1epoch(nnUNetTrainerPLUS):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1


class nnUNetTrainerPLUS_5epochs(nnUNetTrainerPLUS):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


class nnUNetTrainerPLUS_50epochs(nnUNetTrainerPLUS):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 50


class nnUNetTrainerPLUS_250epochs(nnUNetTrainerPLUS):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 250


class nnUNetTrainerPLUS_lesionFocus_10epochs(nnUNetTrainerPLUS_lesionFocus):
    """The lesion-focused recipe for 10 x 250 iterations (the demo's GPU trainer)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 10


class nnUNetTrainerPLUS_lesionFocus_50epochs(nnUNetTrainerPLUS_lesionFocus):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 50


#: features of the CPU-sized network: BASE * 2**stage, capped at MAX
CPU_TINY_BASE_FEATURES = 8
CPU_TINY_MAX_FEATURES = 64


class _CpuTinyNetwork:
    """Mixin: the CPU-sized network (BASE * 2**stage features capped at MAX, one conv per stage) and no
    test-time mirroring (mirroring augmentation is kept)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        configured = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None  # keeps mirroring augmentation, drops 8x slower TTA
        return configured

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        kwargs = dict(configuration_manager.network_arch_init_kwargs)
        n_stages = len(kwargs["features_per_stage"])
        kwargs["features_per_stage"] = [min(CPU_TINY_BASE_FEATURES * 2 ** i, CPU_TINY_MAX_FEATURES)
                                        for i in range(n_stages)]
        kwargs["n_conv_per_stage"] = [1] * n_stages
        kwargs["n_conv_per_stage_decoder"] = [1] * (n_stages - 1)
        return get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, num_output_channels, allow_init=True,
                                      deep_supervision=enable_deep_supervision)


class nnUNetTrainerPLUS_cpuTiny(_CpuTinyNetwork, nnUNetTrainerPLUS):
    """CPU-sized trainer (demo, tests): 8-16-32-64 features, one conv per stage, 15 epochs x 20 iterations,
    no test-time mirroring. Same plans, data pipeline, loss and validation as nnUNetTrainerPLUS."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 15
        self.num_iterations_per_epoch = 20
        self.num_val_iterations_per_epoch = 4


class nnUNetTrainerPLUS_lesionFocus_cpuTiny(_CpuTinyNetwork, nnUNetTrainerPLUS_lesionFocus):
    """The CPU-sized network with the lesion-focused recipe, 60 epochs x 25 iterations (~15 min per fold on
    2 cores at the demo grid): the shortest CPU schedule in which stage one starts to find phantom lesions."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 60
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 2


#: the lesion-centred patch as a fraction of the planned patch (z, y, x), before rounding to the network's stride
LESION_CENTRED_PATCH_FRACTION = (0.67, 0.5, 0.5)
#: share of each batch centred on a labelled voxel; the rest are nnU-Net's random crops. At 1.0 the network never
#: saw air and drew liver outside the body (demo liver Dice 40.5 % on the test cases; 90.5 % at 0.5).
LESION_CENTRED_FOREGROUND_FRACTION = 0.5


def smaller_patch(patch_size, pool_kernel_sizes, fraction) -> list[int]:
    """``fraction`` x ``patch_size`` per axis, rounded down to a multiple of the network's total stride on that
    axis (the product of ``pool_kernel_sizes``) and at least one stride."""
    strides = np.prod(np.asarray(pool_kernel_sizes, dtype=int), axis=0)
    return [int(max(s, (p * f) // s * s)) for p, s, f in zip(patch_size, strides, fraction)]


class _LesionCentredPatches:
    """Mixin: patches of ``LESION_CENTRED_PATCH_FRACTION`` x the planned patch; ``LESION_CENTRED_FOREGROUND_FRACTION``
    of each batch (the second sample of the demo's batch of 2) is centred on a labelled voxel (nnU-Net's
    foreground oversampling: it picks one of the labels present in the case, then one of its voxels, so a lesion
    case gives a lesion-centred patch about every other such draw instead of a whole volume in which lesions are
    ~0.1 % of the voxels), and the rest are nnU-Net's random crops, which show the network the air, the body wall
    and the organs around the liver. The patch size is written into the plans this trainer saves, so nnU-Net's
    validation and every later prediction slide the same window."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        patch = smaller_patch(self.configuration_manager.patch_size, self.configuration_manager.pool_op_kernel_sizes,
                              LESION_CENTRED_PATCH_FRACTION)
        self.configuration_manager.configuration["patch_size"] = patch
        self.plans_manager.plans["configurations"][configuration]["patch_size"] = patch
        self.oversample_foreground_percent = LESION_CENTRED_FOREGROUND_FRACTION


class nnUNetTrainerPLUS_lesionFocus_cpuDemo(_LesionCentredPatches, _CpuTinyNetwork, nnUNetTrainerPLUS_lesionFocus):
    """The CPU demo's stage one: the CPU-sized network, the lesion-focused recipe at AdamW lr 3e-3, batches of one
    random crop and one label-centred patch (:class:`_LesionCentredPatches`), 20 epochs x 60 iterations
    (~2.5 min per fold on 2 cores at the demo grid)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 3e-3
        self.num_epochs = 20
        self.num_iterations_per_epoch = 60
        self.num_val_iterations_per_epoch = 4


class nnUNetTrainerPLUS_cpuTiny_2epochs(nnUNetTrainerPLUS_cpuTiny):
    """The CPU-sized trainer for integration tests: 2 epochs x 4 iterations."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2
