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


def library_imports(module: str) -> set[str]:
    """Every hnc_clip module `module` reaches through imports (function-level ones included), itself included."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = REPO / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        todo.extend(m for m in imported_modules(path, package_of(path)) if m.startswith("hnc_clip"))
    return seen


def test_arguments_never_import_the_trainer():
    """Parsing flags must not pull in the training loop (nor what it imports: transformers' Trainer, the ledger):
    a flag's registry lives beside the code it names (`hnc_clip.attention` for --sdpa_backends)."""
    reached = library_imports("hnc_clip.arguments")
    assert "hnc_clip.losses" in reached  # the walk follows the lazy imports of __post_init__
    assert "hnc_clip.trainer" not in reached
