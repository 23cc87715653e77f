"""The layout holds what docs/ARCHITECTURE.md says: every module it names exists, every
package and top-level module is named there and placed in a layer of the import contract,
and no import cycle exists in bench/ (imports inside functions counted)."""

from __future__ import annotations

import re

import grimp
import tomllib
from conftest import REPO

BENCH = REPO / "bench"
ARCHITECTURE = (REPO / "docs" / "ARCHITECTURE.md").read_text()


def named_paths() -> set[str]:
    """Every ``bench/...`` path the document names (files and folders)."""
    return set(re.findall(r"`(bench/[\w/]*(?:\.py)?)`", ARCHITECTURE))


def test_every_module_the_document_names_exists():
    paths = {p for p in named_paths() if "<name>" not in p}
    assert len(paths) > 30
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/ARCHITECTURE.md names what does not exist: {missing}"


def test_every_package_and_top_level_module_is_in_the_document():
    named = named_paths()
    packages = {f"bench/{p.parent.name}/" for p in BENCH.glob("*/__init__.py")}
    modules = {f"bench/{p.name}" for p in BENCH.glob("*.py")}
    absent = sorted(x for x in packages | modules if x not in named)
    assert not absent, f"add to docs/ARCHITECTURE.md: {absent}"


def contract_layers() -> list[set[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    return [{name.strip() for name in layer.split("|")} for layer in layers]


def test_every_top_level_module_has_a_layer_in_the_import_contract():
    placed = set().union(*contract_layers())
    top = {f"bench.{p.stem}" for p in BENCH.glob("*.py") if p.stem not in ("__init__", "__main__")}
    top |= {f"bench.{p.parent.name}" for p in BENCH.glob("*/__init__.py")}
    assert top - placed == set(), "place these in pyproject.toml's layers contract"
    assert placed - top == set(), "the layers contract names modules that do not exist"


def test_no_import_cycle_counting_imports_inside_functions():
    graph = grimp.build_graph("bench", cache_dir=None)
    cycles = [
        (module, other)
        for module in graph.modules
        for other in graph.find_modules_directly_imported_by(module)
        if module != other
        and graph.find_shortest_chain(importer=other, imported=module) is not None
    ]
    assert not cycles, f"import cycles through: {sorted(cycles)[:5]}"
