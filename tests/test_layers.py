"""The layers read off the tree hold: the library never imports an application or the demo, the applications never
import the demo, and nothing imports the thin entry points or a top-level `eval` package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

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


def test_no_top_level_eval_package():
    assert not (REPO / "eval" / "__init__.py").exists()
    assert not any(p.name == "eval" for p in PACKAGE.iterdir())


# The modules that parse data files. An application takes its inputs from the library's pipeline functions
# (`hnc_clip.evaluation.pipeline`, `hnc_clip.data`'s preparation), never from a reader, so each layout is read in one
# place. `hnc_clip.data.table` is not one of them: it is the negatives tool's input, read by that tool alone.
READERS = (
    "hnc_clip.data.hnc",
    "hnc_clip.data.json_stream",
    "hnc_clip.evaluation.formats",
    "hnc_clip.evaluation.records",
    "hnc_clip.evaluation.zeroshot_data",
    "hnc_clip.evaluation.benchmarks.readers",
    "hnc_clip.evaluation.benchmarks.wds",
)


def imported_from(path: Path, package: str) -> set[str]:
    """`imported_modules`, plus the module that *defines* each name imported from a package (`from hnc_clip.data
    import iter_hnc_pairs` is an import of `hnc_clip.data.hnc`)."""
    import importlib

    found = imported_modules(path, package)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("hnc_clip"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                defined = getattr(getattr(module, alias.name, None), "__module__", None)
                if isinstance(defined, str):
                    found.add(defined)
    return found


def _readers_in(imported: set[str]) -> list[str]:
    return sorted({r for m in imported for r in READERS if m == r or m.startswith(r + ".")})


@pytest.mark.parametrize("path", sorted((PACKAGE / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_scripts_import_no_readers(path):
    bad = _readers_in(imported_from(path, package_of(path)))
    assert not bad, f"application {path.relative_to(REPO)} imports the readers {bad}: call the library's pipeline"


def test_the_reader_boundary_sees_direct_lazy_and_re_exported_readers(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from hnc_clip.evaluation.formats import load_pairs\n"
                       "from hnc_clip.data import iter_hnc_pairs\n"
                       "def f():\n    from hnc_clip.evaluation.benchmarks import readers\n")  # fmt: skip
    found = _readers_in(imported_from(planted, "hnc_clip.scripts"))
    assert found == ["hnc_clip.data.hnc", "hnc_clip.evaluation.benchmarks.readers", "hnc_clip.evaluation.formats"]
