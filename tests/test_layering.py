"""The code's shape: wings (subpackages) stacked in one order, no import cycle between modules or
between wings, a short list of top-level modules, and functions that fit on a screen.

Every ``import`` counts, wherever it stands: inside a function, or under ``if TYPE_CHECKING:``
(a type-only import is still a dependency a reader must follow).
"""

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "atrous"
#: The wings from the bottom up (docs/architecture.md): each imports only wings on lower
#: levels; wings on one level import neither each other nor anything above.
WING_LEVELS = (
    ("errors",),
    ("data", "runtime"),
    ("models",),
    ("export",),
    ("inference",),
    ("evaluation",),
    ("convert",),
    ("hub",),
    ("training",),
    ("apps",),
    ("cli",),
    ("__main__",),
)
LEVEL = {wing: level for level, wings in enumerate(WING_LEVELS) for wing in wings}
MAX_TOP_LEVEL_MODULES = 6


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[str]:
    """Every atrous module ``path`` imports, TYPE_CHECKING and function-level imports too
    (``from atrous.x import y`` counts ``atrous.x.y`` when y is a module, else ``atrous.x``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; write atrous.… in full")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("atrous"):
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("atrous"))


def import_graph() -> dict[str, set[str]]:
    """Module → the atrous modules it imports (the package root, a facade, left out)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imported_modules(path) if m in modules and m not in (name, "atrous")}
        for name, path in modules.items()
        if name != "atrous"
    }


def wing(module: str) -> str:
    return module.split(".")[1]


def wing_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, imports in import_graph().items():
        graph.setdefault(wing(module), set()).update(wing(m) for m in imports)
    return {name: imports - {name} for name, imports in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, " → ".join(cycle)


def test_no_import_cycle_between_wings():
    cycle = find_cycle(wing_graph())
    assert cycle is None, " → ".join(cycle)


def test_every_wing_has_a_place_in_the_order():
    assert set(wing_graph()) == set(LEVEL)


def test_each_wing_imports_only_wings_below_it():
    upward = [
        f"{module} imports {imported}"
        for module, imports in sorted(import_graph().items())
        for imported in sorted(imports)
        if wing(imported) != wing(module) and LEVEL[wing(imported)] >= LEVEL[wing(module)]
    ]
    assert not upward, upward


def test_the_package_holds_few_top_level_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


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
