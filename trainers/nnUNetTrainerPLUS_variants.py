"""Thin variants of nnUNetTrainerPLUS, nnU-Net style: training length, the lesion-focused recipe's lengths and
a CPU-sized trainer.

``nnUNetTrainerPLUS_cpuTiny*`` are for tests, the demo and smoke tests on a laptop: a network with a few
features per stage and few iterations. They are NOT for real training, and they learn no phantom lesion
(benchmarks/RESULTS.md, "Stage one on the phantom"); the lesion-focused recipe is not used here because in
such short schedules it floods the f = 4 map with thousands of false-positive specks.
"""
from __future__ import annotations

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


class nnUNetTrainerPLUS_cpuTiny_2epochs(nnUNetTrainerPLUS_cpuTiny):
    """The CPU-sized trainer for integration tests: 2 epochs x 4 iterations."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2
