"""The code's shape: an import graph without cycles, lower layers never importing higher
ones, and functions that fit on a screen."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "atrous"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """atrous modules ``path`` imports when it runs (``if TYPE_CHECKING:`` blocks excluded)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("atrous"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("atrous"))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in runtime_imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = {k: v for k, v in import_graph().items() if k not in ("atrous", "atrous.__main__")}
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        (
            "atrous.models.saved",
            "atrous.models.model",
        ),  # persistence serves the architecture, not the reverse
        ("atrous.models.card", "atrous.models.model"),
        ("atrous.inference.predict", "atrous.training.loop"),
        ("atrous.inference.fast", "atrous.inference.predict"),
        ("atrous.inference.strategies", "atrous.inference.predict"),
        ("atrous.models.model", "atrous.hub.published"),
        ("atrous.models.layers", "atrous.models.model"),
        ("atrous.data", "atrous.models.model"),
        ("atrous.runtime.precision", "atrous.evaluation.evaluate"),
    ],
)
def test_lower_layers_do_not_import_higher_ones(lower, higher):
    graph = import_graph()
    seen, todo = set(), [lower]
    while todo:  # everything ``lower`` pulls in, directly or not
        for module in graph.get(todo.pop(), ()):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    assert higher not in seen, f"{lower} imports {higher}"


def test_no_function_is_longer_than_a_screen():
    """Every function in src/ and benchmarks/ fits in 60 lines (docstring included)."""
    root = PACKAGE.parents[1]
    long = []
    for path in [*PACKAGE.rglob("*.py"), *(root / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(root)}:{node.name} ({length} lines)")
    assert not long, long
