"""The shape of the package: small files and functions, the lesson free of speed arrangements, no import cycles."""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "minillama")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 80
SUBPACKAGES = ("functional", "model", "fast", "formats", "tokenizer", "generation")


def modules() -> dict[str, str]:
    """Dotted module name -> path, for every file of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, os.path.join(PACKAGE, "..")).replace(os.sep, "/")[:-3].split("/")
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


MODULES = modules()


def imports_of(module: str, path: str) -> set[str]:
    """The minillama modules ``module`` imports, anywhere in the file (function-level imports count)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("minillama"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("minillama"):
                continue
            for alias in node.names:  # "from . import functional" names a module, "from .x import f" a name
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in MODULES else target)
    return {m for m in out if m in MODULES and m != module}


def test_the_subpackages_exist():
    for name in SUBPACKAGES:
        assert f"minillama.{name}" in MODULES, name
    assert "minillama.modeling" in MODULES  # the Hugging Face-style classes, a module of their own


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_and_functions_are_small(module):
    path = MODULES[module]
    source = open(path, encoding="utf-8").read()
    assert source.count("\n") <= MAX_FILE_LINES, f"{path} has {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path}:{node.lineno} {node.name} has {length} lines"


def test_the_lesson_never_imports_fast():
    for module, path in MODULES.items():
        if module.split(".")[:2] in (["minillama", "functional"], ["minillama", "model"]):
            bad = {m for m in imports_of(module, path) if m.startswith("minillama.fast")}
            assert not bad, f"{module} imports {bad}"


def test_functional_imports_only_the_backend():
    for module, path in MODULES.items():
        if module.split(".")[:2] == ["minillama", "functional"]:
            allowed = lambda m: m == "minillama.backend" or m.startswith("minillama.functional")  # noqa: E731
            assert all(allowed(m) for m in imports_of(module, path)), (module, imports_of(module, path))


def test_no_import_cycles():
    graph = {m: imports_of(m, p) for m, p in MODULES.items()}
    # A module importing a submodule also runs its package's __init__; that edge is implied, not a cycle.
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
