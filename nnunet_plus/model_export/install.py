"""Install a model zip of :func:`~nnunet_plus.model_export.export.export_model` into ``$nnUNet_results``: check
every member against the model card before writing anything, then swap each model folder into place whole."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping

from nnunet_plus.files.atomic import atomic_path, replace_folder
from nnunet_plus.model_export.layout import CARD_FORMAT, CARD_JSON, CARD_MARKDOWN, CHUNK, ExportError, sha256
from nnunet_plus.paths import nnunet_folder

__all__ = ["InstallResult", "install_model"]

logger = logging.getLogger(__name__)

_DATASET_NAME = re.compile(r"Dataset\d{3,}_[A-Za-z0-9][A-Za-z0-9_.\-]*")
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


@dataclass
class InstallResult:
    """What :func:`install_model` did: model folders (relative to ``$nnUNet_results``) written, and those already
    installed with the same content."""

    installed: list[str]
    unchanged: list[str]
    card: dict


def _safe_name(name: str) -> PurePosixPath:
    """The relative path of a zip member; ExportError for an absolute name, ``..``, a backslash or a drive."""
    path = PurePosixPath(name)
    if (not name or name.startswith(("/", "\\")) or "\\" in name or re.match(r"^[A-Za-z]:", name)
            or ".." in path.parts or "\x00" in name):
        raise ExportError(f"unsafe member name {name!r} (absolute path, '..' or a backslash); refusing to install "
                          "anything from this zip")
    return path


def _member_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "symlink" if stat.S_ISLNK(mode) else "special file"
    return "folder" if info.is_dir() else "file"


def _read_card(zf: zipfile.ZipFile, zip_file: Path,
               members: Mapping[PurePosixPath, zipfile.ZipInfo]) -> tuple[PurePosixPath, dict]:
    """The card member's path and its content, checked (ExportError when there is none or it is not a card)."""
    cards = [p for p in members if p.name == CARD_JSON and len(p.parts) == 3]
    if not cards:
        raise ExportError(f"{zip_file} has no {CARD_JSON}: it is not an nnunet_plus model (make one with "
                          "nnunet_plus_export_model; nnU-Net's own zips install with "
                          "nnUNetv2_install_pretrained_model_from_zip)")
    if len(cards) > 1:
        raise ExportError(f"{zip_file} holds {len(cards)} model cards ({', '.join(map(str, cards))}); install one "
                          "model per zip")
    try:
        card = json.loads(zf.read(members[cards[0]]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{zip_file}: {cards[0]} is not valid JSON ({exc}); export the model again") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or not isinstance(card.get("files"), dict) \
            or not isinstance(card.get("model"), dict):
        raise ExportError(f"{zip_file}: {cards[0]} is not an nnunet_plus model card (format {CARD_FORMAT}); "
                          "export the model again with nnunet_plus_export_model")
    return cards[0], card


def _card_folders(card: Mapping, card_path: PurePosixPath, zip_file: Path) -> list[PurePosixPath]:
    """The model folders of a card (nnU-Net's first): ``DatasetXXX_Name/<folder>``, checked."""
    names = [card["model"].get("classifier_folder"), card["model"].get("nnunet_folder")]
    folders = [PurePosixPath(n) for n in names if n]
    nnunet = PurePosixPath(card["model"].get("nnunet_folder") or "")
    for folder in folders:
        if (len(folder.parts) != 2 or not _DATASET_NAME.fullmatch(folder.parts[0])
                or not _FOLDER_NAME.fullmatch(folder.parts[1]) or folder.parts[0] != nnunet.parts[0]):
            raise ExportError(f"{zip_file}: the model card names the model folder {str(folder)!r}, not "
                              "DatasetXXX_Name/<folder> of one dataset; refusing to install")
    if card_path.parent != nnunet:
        raise ExportError(f"{zip_file}: the model card {card_path} is not in the model folder {nnunet} it names")
    return folders


def _folder_state(results: Path, folder: PurePosixPath, files: Mapping[str, Mapping]) -> str:
    """``"absent"``, ``"same"`` (every file of the zip present with the same SHA-256) or ``"different"``."""
    target = results / folder
    if not target.exists() and not target.is_symlink():
        return "absent"
    for name, entry in files.items():
        if PurePosixPath(name).parts[:2] != folder.parts:
            continue
        path = results / name
        if not path.is_file() or path.stat().st_size != entry.get("bytes") or sha256(path) != entry.get("sha256"):
            return "different"
    return "same"


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, expected: str | None, zip_file: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with zf.open(info) as src, open(target, "xb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    if expected is not None and digest.hexdigest() != expected:
        raise ExportError(f"{zip_file}: {info.filename} does not match the SHA-256 in the model card (altered or "
                          "corrupt); export the model again")


def _warn_same_id(results: Path, name: str) -> None:
    """nnU-Net finds a dataset id by folder name: another ``DatasetXXX_*`` with the same id makes ``-d XXX`` fail."""
    prefix = name.split("_", 1)[0] + "_"
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        base = results if var == "nnUNet_results" else (Path(os.environ[var]) if os.environ.get(var) else None)
        if base is None or not base.is_dir():
            continue
        others = sorted(p.name for p in base.glob(prefix + "*") if p.is_dir() and p.name != name)
        if others:
            logger.warning("%s also holds %s with the same dataset id: call nnunet_plus_predict with -d %s "
                           "(the full name), not the number", var, ", ".join(others), name)


def install_model(zip_file: str | os.PathLike, *, force: bool = False) -> InstallResult:
    """Unpack a zip of :func:`export_model` into ``$nnUNet_results`` (see the module docstring).

    Raises :class:`ExportError` (one line) for a corrupt zip, a zip that is not an nnunet_plus model, an unsafe
    member, or a model folder already installed with other content (unless ``force``); nothing is written then.
    """
    zip_file = Path(zip_file)
    results = nnunet_folder("nnUNet_results")
    if not zip_file.is_file():
        raise ExportError(f"{zip_file} not found (or not a file); give the .zip written by nnunet_plus_export_model")
    try:
        with zipfile.ZipFile(zip_file) as zf:
            return _install(zf, zip_file, results, force=force)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise ExportError(f"{zip_file} is not a readable zip ({type(exc).__name__}: {exc}); copy or export it "
                          "again") from None


def _install(zf: zipfile.ZipFile, zip_file: Path, results: Path, *, force: bool) -> InstallResult:
    """:func:`install_model` on an open zip: check every member against the card, then write the model folders
    not already installed with the same content."""
    members = _members(zf, zip_file)
    card_path, card = _read_card(zf, zip_file, members)
    folders = _card_folders(card, card_path, zip_file)
    files: dict = card["files"]
    card_files = {card_path, card_path.parent / CARD_MARKDOWN}
    _check_listed(members, files, card_files, folders, zip_file)

    states = {folder: _folder_state(results, folder, files) for folder in folders}
    different = [f for f, s in states.items() if s == "different"]
    if different and not force:
        raise ExportError(f"{results / different[0]} already exists and holds a different model; pass --force to "
                          "replace it (its current files are removed)")
    todo = [f for f, s in states.items() if s != "same"]
    dataset_dir = results / folders[0].parts[0]
    if not todo:
        return InstallResult(installed=[], unchanged=[str(f) for f in folders], card=card)
    _warn_same_id(results, dataset_dir.name)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    need = sum(members[p].file_size for p in members if p.parts[:2] in [f.parts for f in todo])
    free = shutil.disk_usage(dataset_dir).free
    if need > free:
        raise ExportError(f"{dataset_dir} has {free / 1e9:.2f} GB free but the model needs {need / 1e9:.2f} GB; "
                          "free some space and run again")
    _write_folders(zf, zip_file, results, members, files, todo)
    nnunet = folders[-1]
    if nnunet not in todo:  # the nnU-Net folder was already there: refresh its card
        for path in card_files:
            with atomic_path(results / path) as tmp:
                tmp.write_bytes(zf.read(members[path]))
    return InstallResult(installed=[str(f) for f in todo], unchanged=[str(f) for f in folders if f not in todo],
                         card=card)


def _members(zf: zipfile.ZipFile, zip_file: Path) -> dict[PurePosixPath, zipfile.ZipInfo]:
    """The zip's files by relative path (folder entries skipped); ExportError for an unsafe name, a symlink or
    special file, or a member that appears twice."""
    members: dict[PurePosixPath, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        path = _safe_name(info.filename)
        kind = _member_kind(info)
        if kind in ("symlink", "special file"):
            raise ExportError(f"{zip_file}: member {info.filename!r} is a {kind}; refusing to install anything from "
                              "this zip")
        if kind == "folder":
            continue
        if path in members:
            raise ExportError(f"{zip_file}: member {info.filename!r} appears twice; refusing to install")
        members[path] = info
    return members


def _check_listed(members: Mapping[PurePosixPath, zipfile.ZipInfo], files: Mapping[str, Mapping],
                  card_files: set[PurePosixPath], folders: list[PurePosixPath], zip_file: Path) -> None:
    """ExportError unless the zip's members are exactly the card's files (plus the card itself), all inside the
    card's model folders."""
    for path in members:
        if path not in card_files and str(path) not in files:
            raise ExportError(f"{zip_file}: member {str(path)!r} is not listed in the model card; refusing to install")
        if path.parts[:2] not in [f.parts for f in folders]:
            raise ExportError(f"{zip_file}: member {str(path)!r} is outside the model folders "
                              f"{', '.join(map(str, folders))}; refusing to install")
    missing = [name for name in files if PurePosixPath(name) not in members]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ExportError(f"{zip_file} lacks {missing[0]}{more} (listed in the model card); the zip is incomplete, "
                          "copy or export it again")


def _write_folders(zf: zipfile.ZipFile, zip_file: Path, results: Path,
                   members: Mapping[PurePosixPath, zipfile.ZipInfo], files: Mapping[str, Mapping],
                   todo: list[PurePosixPath]) -> None:
    """Extract the members of the ``todo`` model folders into a hidden staging folder of their dataset folder
    (checking each SHA-256), then swap each folder into place whole (:func:`~nnunet_plus.files.atomic.replace_folder`);
    the staging folder is removed in any case."""
    staging = results / todo[0].parts[0] / f".nnunet_plus_install.{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for path, info in members.items():
            if path.parts[:2] not in [f.parts for f in todo]:
                continue
            target = staging.joinpath(*path.parts[1:])
            if os.path.commonpath([staging, target]) != str(staging):  # belt and braces: never outside
                raise ExportError(f"{zip_file}: member {info.filename!r} resolves outside {results}; refusing")
            _extract(zf, info, target, (files.get(str(path)) or {}).get("sha256"), zip_file)
        for folder in todo:  # classifier first, nnU-Net (with the card) last: the card marks a complete install
            replace_folder(staging / folder.parts[1], results / folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
