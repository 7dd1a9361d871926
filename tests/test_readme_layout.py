"""The README's layout table matches the tree: every module and subpackage is named in the
row of its folder, and every path and name the table gives exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TICKED = re.compile(r"`([^`]+)`")


def layout_rows(text: str) -> list[tuple[list[str], list[str]]]:
    """(paths, names) of each row of the table under ``### Layout``."""
    section = text.split("### Layout", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue  # prose, the header or the rule under it
        rows.append((TICKED.findall(cells[0]), TICKED.findall(cells[1])))
    return rows


def listed(rows: list[tuple[list[str], list[str]]]) -> dict[str, set[str]]:
    """The names the table gives each package folder, by folder path."""
    found: dict[str, set[str]] = {}
    for paths, names in rows:
        for path in paths:
            if path.startswith("autoresearchd/"):
                found.setdefault(path, set()).update(names)
    return found


def tree(package: Path) -> dict[str, set[str]]:
    """Each package folder's modules and subpackages, as the table names them."""
    found: dict[str, set[str]] = {}
    for init in sorted(package.rglob("__init__.py")):
        folder = init.parent
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
        subpackages = {f"{p.parent.name}/" for p in folder.glob("*/__init__.py")}
        found[f"{folder.relative_to(package.parent).as_posix()}/"] = modules | subpackages
    return found


def test_the_layout_names_every_module_and_nothing_else() -> None:
    rows = layout_rows(README.read_text(encoding="utf-8"))
    assert rows, "README.md has a layout table"
    assert listed(rows) == tree(ROOT / "autoresearchd")


def test_every_path_in_the_layout_exists() -> None:
    for paths, _ in layout_rows(README.read_text(encoding="utf-8")):
        for path in paths:
            assert (ROOT / path).exists(), f"README layout names {path}, which is not in the tree"


def test_a_module_missing_from_the_layout_is_caught(tmp_path: Path) -> None:
    package = tmp_path / "autoresearchd"
    (package / "worker").mkdir(parents=True)
    for path in ("__init__.py", "models.py", "worker/__init__.py", "worker/loop.py"):
        (package / path).write_text("")
    readme = (
        "### Layout\n\n| where | modules | what |\n|---|---|---|\n"
        "| `autoresearchd/` | `models`, `worker/` | base |\n"
        "| `autoresearchd/worker/` | `loop`, `gone` | the loop |\n"
    )
    assert listed(layout_rows(readme)) != tree(package), "a name the tree lacks is caught"
    (package / "worker" / "gone.py").write_text("")
    assert listed(layout_rows(readme)) == tree(package)
    (package / "worker" / "new.py").write_text("")
    assert listed(layout_rows(readme)) != tree(package), "a module the table lacks is caught"
