"""The house rules of docs/architecture.md, checked on the source: packages form floors and imports
only go down; a package uses another only through its public surface (tests may reach inside:
they are white-box); no `# fmt: skip`."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FLOORS = {"replay": 0, "learner": 1, "actors": 2, "system": 3}
"""Each package may import its own floor and the ones below."""


def python_files(*tops: str) -> list[Path]:
    return sorted(path for top in tops for path in (ROOT / top).rglob("*.py") if "_pb2" not in path.name)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import in `path`, however deeply nested."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


@pytest.mark.parametrize("package", list(FLOORS))
def test_imports_only_go_down(package):
    upward = []
    for path in python_files(package):
        for line, module, _ in imports(path):
            top = module.split(".")[0]
            if top in FLOORS and FLOORS[top] > FLOORS[package]:
                upward.append(f"{where(path, line)} imports {module}")
    assert not upward, "\n".join(upward)


def test_packages_import_each_other_only_through_the_public_surface():
    """Across packages, only names a package's `__init__` exports (its `__all__`) are imported,
    and only from the package itself: `from replay import Table`, not `from replay.table ...`."""
    public = {package: set(importlib.import_module(package).__all__) for package in FLOORS if package != "system"}
    crossing = []
    for path in python_files(*FLOORS):
        own = path.relative_to(ROOT).parts[0]
        for line, module, names in imports(path):
            top = module.split(".")[0]
            if top not in public or top == own:
                continue
            outside = [name for name in names if module != top or name not in public[top]]
            if not names and module != top:
                outside = [module]
            if outside:
                crossing.append(f"{where(path, line)} imports {', '.join(outside)} from {module}")
    assert not crossing, "\n".join(crossing)


def test_no_fmt_skip_markers():
    marked = [
        where(path, number)
        for path in python_files(*FLOORS, "tests")
        for number, text in enumerate(path.read_text().splitlines(), 1)
        if "fmt: skip" in text and path.name != "test_layout.py"
    ]
    assert not marked, "\n".join(marked)


def test_test_files_have_unique_names_across_folders():
    """pytest imports test modules by their base name (no packages under tests/): two files of one
    name in different folders stop the whole collection."""
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
