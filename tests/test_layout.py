"""The package's shape: no import cycle among src/agro modules (function-level imports included), no class
over 300 lines, and every module opens with a docstring saying what it owns."""

import ast
import graphlib
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src"
MAX_CLASS_LINES = 300


def modules() -> dict[str, ast.Module]:
    """Module name -> parsed source, for every file under src/agro."""
    out = {}
    for path in sorted((SRC / "agro").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return out


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The agro modules that `name` imports anywhere in its body (`from agro import x` counts x when it is a
    module); relative imports resolved against the module's package."""
    package = name if (SRC / Path(*name.split(".")) / "__init__.py").exists() else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph() -> dict[str, set[str]]:
    trees = modules()
    return {name: imports(name, tree, set(trees)) for name, tree in trees.items()}


def test_the_import_graph_sees_function_level_imports():
    edges = graph()
    assert "agro.api" in edges["agro.cli"]  # cli imports the trainer inside a function
    assert edges["agro.trainer"]  # and the trainer imports its parts


def test_no_import_cycles():
    try:
        order = list(graphlib.TopologicalSorter(graph()).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
    assert "agro.cli" in order


def test_a_cycle_is_detected():
    """The checker itself: two modules importing each other at function level form a cycle."""
    a = ast.parse("def f():\n    from agro import b\n")
    b = ast.parse("import agro.a\n")
    edges = {"agro.a": imports("agro.a", a, {"agro.a", "agro.b"}), "agro.b": imports("agro.b", b, {"agro.a", "agro.b"})}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(edges).static_order())


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_has_docstring_and_short_classes(name):
    tree = modules()[name]
    assert (ast.get_docstring(tree) or "").strip(), f"{name}: no module docstring saying what it owns"
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"{name}.{node.name}: {length} lines > {MAX_CLASS_LINES}"
