"""Imports flow one way (docs/ARCHITECTURE.md): every import of every module, function-level ones included,
goes to a unit of the same or a lower layer, and the units import each other without a cycle."""
from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package name -> source folder (setup.cfg's package_dir)
SOURCES = {"nnunet_plus": ROOT / "nnunet_plus", "nnunet_plus.postprocessing": ROOT / "postprocessing",
           "nnunet_plus.trainers": ROOT / "trainers"}
#: lowest first; a unit is a top-level module or subpackage of nnunet_plus ("nnunet_plus" = the package's API)
LAYERS: list[set[str]] = [
    {"nnunet_plus", "nnunet_plus.files", "nnunet_plus.schema", "nnunet_plus.paths",  # files, schema, folders
     "nnunet_plus.child_process", "nnunet_plus.cli_types"},
    {"nnunet_plus.postprocessing"},                                                # the paper's post-processing
    {"nnunet_plus.case_analysis", "nnunet_plus.evaluation", "nnunet_plus.decision_rule", "nnunet_plus.phantom"},
    {"nnunet_plus.refine", "nnunet_plus.nnunet_validation"},                       # softmax -> reported lesions
    {"nnunet_plus.trainers", "nnunet_plus.classifier", "nnunet_plus.schema_cli"},  # the two stages' training
    {"nnunet_plus.predict", "nnunet_plus.model_export"},                           # prediction, model files
    {"nnunet_plus.demo_report"},
    {"nnunet_plus.demo"},
]
LAYER_OF = {unit: number for number, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imported(path: Path) -> set[str]:
    """Every nnunet_plus module named by an import anywhere in the file (TYPE_CHECKING blocks included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: relative import; use the absolute module name")
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "nnunet_plus" or n.startswith("nnunet_plus.")}


MODULES = _modules()
EDGES = {module: _imported(path) for module, path in MODULES.items()}


def test_every_unit_has_a_layer():
    assert {_unit(m) for m in MODULES} <= set(LAYER_OF), sorted({_unit(m) for m in MODULES} - set(LAYER_OF))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_or_sideways(module):
    here = LAYER_OF[_unit(module)]
    upward = sorted(name for name in EDGES[module] if LAYER_OF.get(_unit(name), -1) > here)
    assert not upward, f"{module} (layer {here}) imports a higher layer: {upward}"


def test_no_cycle_between_units():
    graph = collections.defaultdict(set)
    for module, names in EDGES.items():
        graph[_unit(module)].update(_unit(n) for n in names if _unit(n) != _unit(module))
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = 1
        for other in sorted(graph[unit]):
            assert state.get(other) != 1, "import cycle: " + " -> ".join([*path, unit, other])
            if other not in state:
                visit(other, [*path, unit])
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


def test_the_check_sees_an_upward_import(tmp_path):
    """The walker finds a function-level import (the way a cycle used to be hidden)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from nnunet_plus.demo import Demo\n    return Demo\n")
    assert _imported(source) == {"nnunet_plus.demo"}
