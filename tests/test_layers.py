"""The import layers of docs/design.md: a module may import only from its own layer or below.

Catches: an algorithm reaching up into the runner hooks, a likelihood tool importing an objective
(the old IS-sampler dependency), anything in hybrids importing experiments.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hybrids"

# Keep in step with the table in docs/design.md.
LAYERS = {
    "tensors": 0, "io": 0, "stats": 0,
    "sdes": 1, "data": 1,
    "distributions": 2, "time_sampling": 2,
    "models": 3,
    "likelihood": 4, "metrics": 4,
    "objectives": 5,
    "samplers": 6,
    "toolkit": 7, "training": 7,
    "hooks": 8, "runs": 8,
}


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


FILES = sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT)


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(p) for p in FILES}
    assert parts <= set(LAYERS), f"add {sorted(parts - set(LAYERS))} to LAYERS and docs/design.md"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path):
    part = _part(path)
    for name in _imports(path):
        assert not name.startswith("experiments"), f"{path} imports {name}: the library never imports the runner"
        if not name.startswith("hybrids."):
            continue
        target = name.split(".")[1]
        assert LAYERS[target] <= LAYERS[part], (
            f"{path.relative_to(ROOT)} (layer {LAYERS[part]}, {part}) imports {name} "
            f"(layer {LAYERS[target]}): move the shared code down or the importer up")
