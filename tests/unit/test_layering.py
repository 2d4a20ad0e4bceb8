"""The package map of docs/architecture.md, enforced: dependencies point one way, and the core has no Dagster.

Each top-level piece of `etl_platform` sits in a layer; a module may import only pieces of a lower
layer (or its own package). The test reads the imports with `ast`, so it needs no server.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "etl_platform"

# Lowest first. Pieces in one layer do not import each other.
LAYERS: list[set[str]] = [
    {"config", "events"},  # settings and the event envelope: the vocabulary of everything else
    {"aws", "analytics", "stack"},  # boto3 clients; the analytics engine; the local servers
    {"lake", "pipelines"},  # the lake's layout, writers, readers, replay; pipelines: contracts and names
    {"stream", "search", "warehouse"},  # the stages that read and write the lake
    {"ops"},  # metrics, alarms, alerts, scaling, security, provisioning
    {"dashboard"},  # the live page: search aggregations, the lease table (stream), metrics (ops)
    {"cli"},  # the command line
]
LAYER_OF = {piece: level for level, pieces in enumerate(LAYERS) for piece in pieces}
DAGSTER_LAYER = (
    "dagster",
    "dagster_aws",
    "dagster_dbt",
    "assets",
    "resources",
    "sensors",
    "definitions",
    "stream_definitions",
)


def _piece(path: Path) -> str:
    parts = path.relative_to(CORE).parts
    return parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    """Every module name `path` imports (absolute, as written)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "etl_platform":
                names += [f"etl_platform.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


MODULES = sorted(p for p in CORE.rglob("*.py") if p.name != "__init__.py" or p.parent != CORE)


def test_every_piece_of_the_core_has_a_layer():
    pieces = {_piece(p) for p in MODULES}
    assert pieces - set(LAYER_OF) == set(), "add new packages to LAYERS (and to docs/architecture.md)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_imports_point_down_and_never_at_dagster(path: Path):
    piece = _piece(path)
    wrong = []
    for name in _imports(path):
        top = name.split(".")[0]
        if top in DAGSTER_LAYER:
            wrong.append(f"{name} (the core library has no Dagster imports)")
        elif top == "etl_platform" and "." in name:
            target = name.split(".")[1]
            if target != piece and LAYER_OF.get(target, -1) >= LAYER_OF[piece]:
                wrong.append(f"{name} (layer {LAYER_OF.get(target)} from layer {LAYER_OF[piece]})")
    assert not wrong, f"{path.relative_to(CORE)} imports upward: {wrong}"


@pytest.mark.parametrize("package", sorted(p.parent for p in CORE.rglob("__init__.py")), ids=lambda p: p.name)
def test_every_package_says_what_it_owns(package: Path):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 8, f"{package.relative_to(CORE.parent)}/__init__.py needs a docstring"
