"""Dependencies point one way, as docs/architecture.md draws them: no import cycle, no import
against the layer table, torch only in train.py and the harness, NVML only in gpus.

The import graph is computed statically with ``ast`` from the package's source. Every
``import`` statement counts, at module level, inside functions and under ``TYPE_CHECKING``:
an import moved into a function to dodge a cycle still ties the two modules together. The
layer table is parsed from docs/architecture.md, so the document is the single source.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autoresearchd"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
TABLE_HEADER = re.compile(r"^\|\s*layer\s*\|\s*modules\s*\|\s*may import\s*\|\s*$")

Graph = dict[str, set[str]]


# -- the graph ----------------------------------------------------------------------------


def module_names(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """What ``node`` imports: ``m.n`` for ``from m import n`` (a submodule, or a name in m)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    yield from (f"{base}.{alias.name}" for alias in node.names)


def owner(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module ``name`` is or lives in, if it is one of ours: importing a submodule is an
    edge to the submodule, importing a name is an edge to the module that defines it."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(package: Path) -> Graph:
    """Which of the package's modules each of its modules imports."""
    modules = module_names(package)
    graph: Graph = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for dotted in imported(node, name, path.name == "__init__.py"):
                    target = owner(dotted, modules)
                    if target is not None:
                        targets.add(target)
        targets.discard(name)
        graph[name] = targets
    return graph


def reachable(graph: Graph, start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def cycles(graph: Graph) -> list[list[str]]:
    """Each group of modules that import one another, however indirectly, sorted."""
    reach = {name: reachable(graph, name) for name in graph}
    groups = {
        frozenset(m for m in reach[name] if name in reach[m])
        for name in graph
        if name in reach[name]
    }
    return sorted(sorted(group) for group in groups)


# -- the layer table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    name: str
    patterns: tuple[str, ...]
    may_import: frozenset[str]

    def holds(self, module: str) -> bool:
        return any(
            module == p or (p.endswith(".*") and module.startswith(p[:-1])) for p in self.patterns
        )


def parse_layers(text: str, root: str = "autoresearchd") -> list[Layer]:
    """The layer table of docs/architecture.md; module names made absolute under ``root``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if TABLE_HEADER.match(line)), None)
    if start is None:
        raise AssertionError(f"{ARCHITECTURE}: no '| layer | modules | may import |' table")
    layers = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        name, modules, may_import = (cell.strip() for cell in line.strip("|").split("|"))
        patterns = tuple(
            m if m == root else f"{root}.{m}" for m in re.findall(r"`([^`]+)`", modules)
        )
        allowed = frozenset(n.strip() for n in may_import.split(",") if n.strip())
        layers.append(Layer(name, patterns, allowed))
    unknown = {n for layer in layers for n in layer.may_import} - {layer.name for layer in layers}
    assert not unknown, f"{ARCHITECTURE}: 'may import' names unknown layers {sorted(unknown)}"
    return layers


def layer_of(module: str, layers: Iterable[Layer]) -> list[Layer]:
    return [layer for layer in layers if layer.holds(module)]


def violations(graph: Graph, layers: list[Layer]) -> list[str]:
    """Each import the table forbids, as ``a -> b (layer x may not import layer y)``."""
    found = []
    for source, targets in sorted(graph.items()):
        (mine,) = layer_of(source, layers)
        for target in sorted(targets):
            (theirs,) = layer_of(target, layers)
            if theirs.name != mine.name and theirs.name not in mine.may_import:
                found.append(
                    f"{source} -> {target} (layer {mine.name} may not import layer {theirs.name})"
                )
    return found


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(PACKAGE)


@pytest.fixture(scope="module")
def layers() -> list[Layer]:
    return parse_layers(ARCHITECTURE.read_text(encoding="utf-8"))


def test_every_module_belongs_to_exactly_one_layer(graph: Graph, layers: list[Layer]) -> None:
    misplaced = {m: [layer.name for layer in layer_of(m, layers)] for m in graph}
    assert {m: found for m, found in misplaced.items() if len(found) != 1} == {}


def test_the_package_has_no_import_cycle(graph: Graph) -> None:
    assert cycles(graph) == []


def test_imports_follow_the_layer_table(graph: Graph, layers: list[Layer]) -> None:
    assert violations(graph, layers) == []


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a small package with both faults is reported with both."""
    package = tmp_path / "autoresearchd"
    (package / "memory").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text("def f():\n    from autoresearchd import worker\n")
    (package / "worker.py").write_text("from autoresearchd.memory.store import Store\n")
    (package / "memory" / "__init__.py").write_text("")
    (package / "memory" / "store.py").write_text("import autoresearchd.models\n")
    table = (
        "| layer | modules | may import |\n|---|---|---|\n"
        "| base | `autoresearchd`, `models` | |\n"
        "| memory | `memory`, `memory.*` | base |\n"
        "| worker | `worker` | base, memory |\n"
    )
    found = import_graph(package)
    assert found["autoresearchd.worker"] == {"autoresearchd.memory.store"}
    assert cycles(found) == [
        ["autoresearchd.memory.store", "autoresearchd.models", "autoresearchd.worker"]
    ]
    assert violations(found, parse_layers(table)) == [
        "autoresearchd.models -> autoresearchd.worker (layer base may not import layer worker)"
    ]


# -- torch, NVML, cli and daemon ----------------------------------------------------------


def top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def imports_harness(path: Path) -> bool:
    return any(
        n == "autoresearchd.harness" or n.startswith("autoresearchd.harness.")
        for n in top_level_imports(path)
    )


def assert_runs(code: str) -> None:
    """Run ``code`` in a fresh interpreter, where nothing is imported yet; it must pass."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_importing_the_package_and_cli_does_not_load_torch() -> None:
    code = (
        "import sys, pkgutil, importlib, autoresearchd, autoresearchd.cli\n"
        "for m in pkgutil.walk_packages(autoresearchd.__path__, 'autoresearchd.'):\n"
        "    if m.name.split('.')[1] not in ('harness', '__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    assert_runs(code)


def test_only_the_harness_imports_torch() -> None:
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "harness" not in p.relative_to(PACKAGE).parts
        and any(n.split(".")[0] == "torch" for n in top_level_imports(p))
    ]
    assert offenders == []


def test_nothing_but_train_py_imports_the_torch_harness() -> None:
    """The package, the benchmarks and the scripts; in tests only the harness's own."""
    candidates = [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "benchmarks").rglob("*.py"),
        *(ROOT / "scripts").rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
        *ROOT.glob("*.py"),
    ]
    exempt = (PACKAGE / "harness", ROOT / "tests" / "harness", ROOT / "tests" / "fixtures")
    offenders = [
        str(p.relative_to(ROOT))
        for p in candidates
        if p != ROOT / "train.py"
        and not any(p.is_relative_to(e) for e in exempt)
        and imports_harness(p)
    ]
    assert offenders == []
    assert imports_harness(ROOT / "train.py")


def test_only_gpus_imports_pynvml() -> None:
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "gpus.py" and any(n.split(".")[0] == "pynvml" for n in top_level_imports(p))
    ]
    assert offenders == []


def test_nothing_imports_cli_or_daemon(graph: Graph) -> None:
    cli = {m for m in graph if m == "autoresearchd.cli" or m.startswith("autoresearchd.cli.")}
    entry = {*cli, "autoresearchd.__main__"}
    offenders = [
        f"{source} -> {target}"
        for source, targets in sorted(graph.items())
        for target in sorted(targets & {*cli, "autoresearchd.daemon"})
        if source not in entry
    ]
    assert offenders == []


def test_a_runs_harness_loads_no_network_client() -> None:
    # Each run's start-up pays for what the harness imports; a run never downloads.
    code = (
        "import sys, autoresearchd.harness.data, autoresearchd.harness.evaluation\n"
        "import autoresearchd.harness.go\n"
        "loaded = sorted(m for m in ('httpx', 'tenacity', 'anyio') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    assert_runs(code)
