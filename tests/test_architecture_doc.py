"""docs/ARCHITECTURE.md stays true: its module table lists every module of the package and nothing else, and
its layer table names the units of tests/test_import_layers.py's LAYERS."""
from __future__ import annotations

import re
from pathlib import Path

from test_import_layers import LAYERS, MODULES

DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


def test_module_table_lists_every_module():
    listed = set(re.findall(r"^\| `(nnunet_plus[\w.]*)` \| `", DOC.read_text(encoding="utf-8"), flags=re.M))
    assert listed == set(MODULES), {"missing": sorted(set(MODULES) - listed), "stale": sorted(listed - set(MODULES))}


def test_layer_table_matches_the_import_test():
    rows = re.findall(r"^\| (\d) \| (.+?) \| .+ \|$", DOC.read_text(encoding="utf-8"), flags=re.M)
    documented = [{"nnunet_plus" if name == "nnunet_plus" else f"nnunet_plus.{name}"
                   for name in re.findall(r"`([\w.]+)`", units)} for _, units in rows]
    assert documented == LAYERS
