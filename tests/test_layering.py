"""The import graph of ``src/stellar``: no cycle, and packages import only the layers below.

Every ``import`` statement counts, module-level or inside a function (a function-level import
is still a dependency, it only hides the cycle until the call). Imports under
``if TYPE_CHECKING:`` cannot make a cycle, but they still tell a lower layer about a higher
one, so the layer order counts them. Packages are read from the paths, so files moved between
packages are judged where they are.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "stellar"
# Lower rank = lower layer; a module may import its own package and lower ranks only.
# ``checkpoint`` is the leaf weights I/O that the model classes use (as transformers'
# modeling code imports its checkpoint helpers, never the reverse); ``hub`` is the
# name -> model front end built on the models.
RANKS: dict[str, int] = {
    "errors": 0,
    "images": 0,
    "progress": 0,
    "schema": 0,
    "outputs": 0,
    "layers": 1,
    "checkpoint": 2,
    "models": 3,
    "data": 4,
    "losses": 5,
    "hub": 6,
    "runtime": 6,
    "train": 7,
    "eval": 7,
    "viz": 7,
    "explore": 8,
    "cli": 9,
    "__main__": 10,
    "demo": 9,
    "__init__": 10,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, type_checking: bool = False) -> set[str]:
    """Every stellar module named by an import in ``tree`` (TYPE_CHECKING blocks only if asked)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from stellar.x import y`` may name the submodule stellar.x.y
            found.update(f"{target}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name == ROOT or name.startswith(ROOT + ".")}


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    """``module -> stellar modules it imports`` over every .py file under src/stellar."""
    files = {_module_name(p): p for p in (SRC / ROOT).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = _imports(tree, name, path.name == "__init__.py", type_checking)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative DFS, three colours)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def _package(module: str) -> str:
    """``stellar.models.vqgan`` -> ``models``; ``stellar`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_detector_sees_function_level_imports() -> None:
    tree = ast.parse("def f():\n    from stellar.b import x\n")
    assert _imports(tree, "stellar.a", False) == {"stellar.b", "stellar.b.x"}
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import stellar.b\n")
    assert _imports(tree, "stellar.a", False) == set()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_packages_import_only_lower_layers() -> None:
    """Packages named in RANKS import only their own or lower ones, TYPE_CHECKING included
    (others: cycles only)."""
    wrong = sorted(
        f"{module} ({_package(module)}) imports {target} ({_package(target)})"
        for module, targets in import_graph(type_checking=True).items()
        for target in targets
        if _package(target) != _package(module)
        and _package(module) in RANKS
        and _package(target) in RANKS
        and RANKS[_package(target)] > RANKS[_package(module)]
        # a package's __init__ may re-export its own modules
        and not (target.startswith(module + ".") and module != ROOT)
    )
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)
