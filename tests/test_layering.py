"""Dependencies point one way: the daemon side never loads torch, and only gpus imports pynvml."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "autoresearchd"


def test_importing_package_and_cli_does_not_load_torch() -> None:
    code = (
        "import sys, pkgutil, importlib, autoresearchd, autoresearchd.cli\n"
        "for m in pkgutil.walk_packages(autoresearchd.__path__, 'autoresearchd.'):\n"
        "    if m.name.split('.')[1] not in ('harness', '__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_harness_imports_torch() -> None:
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "harness" not in p.parts and "torch" in imports_of(p)
    ]
    assert offenders == []


def test_only_gpus_imports_pynvml() -> None:
    offenders = [
        p.name for p in PACKAGE.rglob("*.py") if p.name != "gpus.py" and "pynvml" in imports_of(p)
    ]
    assert offenders == []


def test_nothing_imports_cli_or_daemon() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in (
                "autoresearchd.cli",
                "autoresearchd.daemon",
            ):
                offenders.append(path.name)
    assert offenders == []
