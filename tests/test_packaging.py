"""``pip install .`` ships every package: setup.cfg lists its packages by hand (two of them live outside
nnunet_plus/, see package_dir), so a new subpackage missing from the list would be left out of a normal install
while the editable install of the tests still finds it."""
from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def _listed(config: configparser.ConfigParser, key: str) -> list[str]:
    return [line.strip() for line in config["options"][key].splitlines() if line.strip()]


def test_setup_cfg_lists_every_package_folder():
    config = _config()
    folders = {"nnunet_plus": ROOT / "nnunet_plus"}
    for line in _listed(config, "package_dir"):
        name, folder = (part.strip() for part in line.split("="))
        folders[name] = ROOT / folder
    found = set()
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            if "__pycache__" not in parts:
                found.add(".".join([package, *parts]))
    assert set(_listed(config, "packages")) == found
