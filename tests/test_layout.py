"""The package's layout, checked mechanically: imports run one way down the layers, and package
faces only hand names on (DEVELOPERS.md, "Layout").

Layers, lowest first: base (errors, io, resources) -> ir -> ops (the op registry) -> shapes ->
front end (parser, validate, printer, passes, builder) -> targets (signatures, tables) -> latency (graph, indicators) -> compiler ->
workflows (search, training, export, profiling, data) -> cli. A module may import from its own
layer and the layers below, never from a higher one; every import counts, also those inside
functions and under ``TYPE_CHECKING`` (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spnas_dsl"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("spnas_dsl", "spnas_dsl.errors", "spnas_dsl.io", "spnas_dsl.resources")),
    ("ir", ("spnas_dsl.ir",)),
    ("ops", ("spnas_dsl.ops",)),
    ("shapes", ("spnas_dsl.shapes",)),
    ("front end", ("spnas_dsl.parser", "spnas_dsl.tree_to_ir", "spnas_dsl.validate", "spnas_dsl.printer", "spnas_dsl.passes",
                   "spnas_dsl.builder")),
    ("targets", ("spnas_dsl.targets",)),
    ("latency", ("spnas_dsl.latency",)),
    ("compiler", ("spnas_dsl.compiler",)),
    ("workflows", ("spnas_dsl.data", "spnas_dsl.training", "spnas_dsl.backends", "spnas_dsl.profiling",
                   "spnas_dsl.search", "spnas_dsl.train")),
    ("cli", ("spnas_dsl.cli", "spnas_dsl.__main__")),
]

# Package faces: an __init__.py that only re-exports (no functions, no classes, a short file).
FACES = ("targets", "latency", "backends", "data", "profiling", "compiler")
FACE_MAX_LINES = 40


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of ``module``: the one whose prefix matches it longest (``spnas_dsl`` alone is base)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "spnas_dsl" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layout.py")
    return best


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``spnas_dsl`` import of the file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "spnas_dsl"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "spnas_dsl":
                continue
            # ``from spnas_dsl import training``: the submodule is the dependency
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if (PACKAGE.parent / sub.replace(".", "/")).exists()
                              or (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else base))
    return sorted(set(found))


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in MODULES:
        layer_of(module_name(path))


def test_imports_run_down_the_layers():
    upward = []
    for path in MODULES:
        module = module_name(path)
        mine = layer_of(module)
        for line, imported in imported_modules(path):
            theirs = layer_of(imported)
            if theirs > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({LAYERS[mine][0]}) imports "
                              f"{imported} ({LAYERS[theirs][0]})")
    assert not upward, "imports that run back up a layer:\n" + "\n".join(upward)


@pytest.mark.parametrize("package", FACES)
def test_package_faces_only_hand_names_on(package):
    path = PACKAGE / package / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    logic = [type(n).__name__ for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
    assert not logic, f"{path}: define {logic} in a named module and re-export it"
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= FACE_MAX_LINES, f"{path}: {lines} lines (a face re-exports; at most {FACE_MAX_LINES})"
    for name in getattr(__import__(f"spnas_dsl.{package}", fromlist=["*"]), "__all__", []):
        assert hasattr(__import__(f"spnas_dsl.{package}", fromlist=[name]), name), f"{package}.__all__ lists {name}"
