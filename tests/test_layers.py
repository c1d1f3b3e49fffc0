"""The layers read off the tree hold: the library never imports an application or the demo, the applications never
import the demo, and nothing imports the thin entry points or a top-level `eval` package. Test files share code through
`tests/helpers.py` only: none imports another test file or `conftest`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .helpers import REPO

PACKAGE = REPO / "hnc_clip"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    return module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module `path` (in `package`) imports, function-level imports included, relative ones resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return {"scripts": "application", "demo": "demo"}.get(rel[0], "library")


FORBIDDEN = {
    "library": ("hnc_clip.scripts", "hnc_clip.demo", "run_hnc_clip", "eval"),
    "application": ("hnc_clip.demo", "run_hnc_clip", "eval"),
    "demo": ("run_hnc_clip", "eval"),
}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_inward(path):
    layer = layer_of(path)
    forbidden = FORBIDDEN[layer]
    imported = imported_modules(path, package_of(path))
    bad = sorted(m for m in imported if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert not bad, f"{layer} module {path.relative_to(REPO)} imports {bad}"


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    """The rule above would pass vacuously if imports were missed: a planted one must be found."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from ..scripts import train\n    import hnc_clip.demo.run\n")
    found = imported_modules(planted, "hnc_clip.data")
    assert {"hnc_clip.scripts", "hnc_clip.scripts.train", "hnc_clip.demo.run"} <= found


TESTS = REPO / "tests"
# Shared code goes through tests/helpers.py; conftest is pytest's, for fixtures, not a module to import from.
TEST_MODULES = {f"tests.{p.stem}" for p in (*TESTS.glob("test_*.py"), TESTS / "conftest.py")}


def cross_test_imports(path: Path) -> list[str]:
    """The test modules and `conftest` that `path`, a module of `tests/`, imports."""
    return sorted(m for m in imported_modules(path, "tests") if m in TEST_MODULES)


def test_no_test_file_imports_another_test_file():
    bad = {p.name: found for p in sorted(TESTS.glob("*.py")) if (found := cross_test_imports(p))}
    assert not bad, f"import these from tests/helpers.py instead: {bad}"


@pytest.mark.parametrize("source, found", [
    ("from .test_trainer import run\n", "tests.test_trainer"),
    ("def f():\n    from . import test_trainer\n", "tests.test_trainer"),
    ("import tests.test_distributed\n", "tests.test_distributed"),
    ("from tests.conftest import REPO\n", "tests.conftest"),
], ids=["relative", "lazy_package", "absolute", "conftest"])
def test_the_test_file_checker_sees_every_import_form(tmp_path, source, found):
    """The rule above would pass vacuously if an import form were missed: a planted one must be found."""
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    assert cross_test_imports(planted) == [found]


def test_no_top_level_eval_package():
    assert not (REPO / "eval" / "__init__.py").exists()
    assert not any(p.name == "eval" for p in PACKAGE.iterdir())
