"""Where things live: nnU-Net's folder environment variables, dataset folders and our trainers folder."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path


class PathError(RuntimeError):
    """A folder or environment variable that the command needs is missing."""


def trainers_path() -> str:
    """Absolute path of the folder holding our nnU-Net trainers (what ``nnUNet_extTrainer`` points at)."""
    spec = importlib.util.find_spec("nnunet_plus.trainers")  # located, not imported: the trainers import us
    return str(Path(spec.origin).resolve().parent)


def ensure_ext_trainer_env() -> None:
    """Set ``nnUNet_extTrainer`` to our trainers folder when it is unset (our own commands call this)."""
    if not os.environ.get("nnUNet_extTrainer"):
        os.environ["nnUNet_extTrainer"] = trainers_path()


def trainers_path_entry_point() -> None:
    """``nnunet_plus_trainers_path``: print the trainers folder for ``export nnUNet_extTrainer=$(...)``."""
    print(trainers_path())


def nnunet_folder(env_var: str) -> Path:
    """The folder named by one of nnU-Net's environment variables; :class:`PathError` if unset."""
    value = os.environ.get(env_var)
    if not value:
        raise PathError(f"environment variable {env_var} is not set; export {env_var}=/path/to/folder "
                        "(see nnU-Net's documentation/set_environment_variables.md)")
    return Path(value)


def dataset_name(dataset: str | int) -> str:
    """``DatasetXXX_Name`` for a dataset id or name, looked up in nnU-Net's folders."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError as exc:
        raise PathError(f"dataset {dataset!r} not found in nnUNet_raw / nnUNet_preprocessed / nnUNet_results; "
                        "check the id and the environment variables") from exc


def trained_folds(folder: str | os.PathLike, checkpoint_name: str) -> list[int | str]:
    """The folds of a model folder that hold ``checkpoint_name``, in order ``0, 1, ..., "all"``: only folders
    named exactly ``fold_<k>`` or ``fold_all`` (nnU-Net's names; a copy such as ``fold_1_old`` is not a fold)."""
    found = [m[1] for p in Path(folder).glob("fold_*")
             if (m := re.fullmatch(r"fold_(\d+|all)", p.name)) and (p / checkpoint_name).is_file()]
    return sorted((int(f) if f.isdigit() else f for f in found), key=lambda f: (isinstance(f, str), f))


def resolve_device(name: str | None = None):
    """The ``torch.device`` to run on: ``"cpu"``, ``"cuda"`` (``"cuda:1"``) or ``"mps"``; None = CUDA when PyTorch
    sees a GPU, else the CPU. ValueError (one line, naming ``-device cpu``) when the device is not available."""
    import torch  # here: the folder functions above must not pay for importing torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"-device {name} was asked for but PyTorch sees no CUDA GPU; use -device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"-device {name} was asked for but the MPS backend is not available; use -device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"-device must be cpu, cuda or mps, got {name}")
    return device
