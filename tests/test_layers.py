"""The layers read off the tree hold: the library never imports an application or the demo, the applications never
import the demo, and nothing imports the thin entry points or a top-level `eval` package. Test files share code through
`tests/helpers.py` only: none imports another test file or `conftest`."""

from __future__ import annotations

import ast
import importlib
import re
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


APPLICATIONS = [*sorted(p for p in (PACKAGE / "scripts").glob("*.py") if p.name != "__init__.py"),
                PACKAGE / "demo" / "run.py", PACKAGE / "demo" / "world.py"]  # fmt: skip


@pytest.mark.parametrize("path", APPLICATIONS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_application_is_make_parser_main_cli(path):
    """One convention: `make_parser()` builds the parser, `main(<parsed arguments>)` does the work (tests call it),
    `cli(argv)` parses with `make_parser` (directly, or through a helper such as train's `parse_args`, which also
    reads a YAML/JSON file), calls `main` and returns the exit status, `__main__` exits with `cli()`."""
    tree = ast.parse(path.read_text(), str(path))
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"make_parser", "main", "cli"} <= funcs.keys(), f"{path.name} defines {sorted(funcs)}"
    assert not funcs["make_parser"].args.args
    assert "argv" not in [a.arg for a in funcs["main"].args.args], "main takes parsed arguments, not argv"
    assert [a.arg for a in funcs["cli"].args.args] == ["argv"]
    def calls(func: ast.FunctionDef) -> set[str]:
        return {n.func.id for n in ast.walk(func) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}

    called = calls(funcs["cli"])
    parses = {"make_parser"} | {f for f in called & funcs.keys() if "make_parser" in calls(funcs[f])}  # train's YAML
    assert "main" in called and parses & called, f"{path.name}: cli calls {sorted(called)}"
    entry = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "__name__ == '__main__'"]
    assert [ast.unparse(b) for n in entry for b in n.body] == ["sys.exit(cli())"]


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


@pytest.mark.parametrize("module", ["hnc_clip.step", "hnc_clip.modeling", "hnc_clip.objective", "hnc_clip.resume",
                                    "hnc_clip.data.stream"])
def test_the_trainers_parts_never_import_the_trainer(module):
    """The loss step's bookkeeping and the trainer's mixins are handed the trainer (`self`, `run_loss_step(trainer,
    ...)`): importing it back would make a cycle, and pull the training loop into what checks a checkpoint."""
    reached = library_imports(module)
    assert module in reached and "hnc_clip.trainer" not in reached


def test_the_trainer_check_sees_a_lazy_import_of_the_trainer(tmp_path, monkeypatch):
    """The check above would pass vacuously if the walk missed imports: a planted lazy one must be reached."""
    package = tmp_path / "hnc_clip"
    package.mkdir()
    (package / "planted.py").write_text("def f():\n    from .trainer import HncTrainer\n")
    (package / "trainer.py").write_text("")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert library_imports("hnc_clip.planted") == {"hnc_clip.planted", "hnc_clip.trainer"}


# What the code and docs name: `hnc_clip.module.attr` in backticks, and repository paths (`hnc_clip/forward.py`).
DOTTED = re.compile(r"`(hnc_clip(?:\.[A-Za-z_]\w*)+)`")
PATHS = re.compile(r"\b((?:hnc_clip|tests|bench|docs)/[\w/]+\.(?:py|md))\b")
NAMING = [*PACKAGE.rglob("*.py"), *(REPO / "tests").glob("*.py"), *(REPO / "bench").glob("*.py"),
          *(REPO / "docs").glob("*.md"), REPO / "bench" / "README.md", REPO / "README.md"]  # fmt: skip
NAMING = [p for p in NAMING if p != Path(__file__)]  # its own examples name moved things on purpose


def resolves(dotted: str) -> bool:
    """Whether `a.b.c` is a module, or an attribute path under the longest module prefix of it."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_what_the_code_and_docs_name_exists():
    """A comment or doc naming a module, function or file that moved sends a newcomer nowhere."""
    stale = sorted({(m, p.relative_to(REPO).as_posix()) for p in NAMING for m in DOTTED.findall(p.read_text())
                    if not resolves(m)}
                   | {(f, p.relative_to(REPO).as_posix()) for p in NAMING for f in PATHS.findall(p.read_text())
                      if not (REPO / f).exists()})  # fmt: skip
    assert not stale, stale


def test_the_name_checker_sees_moved_names():
    assert resolves("hnc_clip.losses.LossSpec.for_contrastive") and resolves("hnc_clip.data.image_cache")
    assert not resolves("hnc_clip.losses.hard_negative_accuracy") and not resolves("hnc_clip.image_cache")
    found = PATHS.findall("see hnc_clip/image_cache.py and docs/demo.md.")
    assert found == ["hnc_clip/image_cache.py", "docs/demo.md"]
