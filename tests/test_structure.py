"""The shape of the code, checked: no import cycles (at module level or inside functions), the memory math
free of the front ends, no function over 120 lines, and engine names listed in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gpuplan"
MAX_FUNCTION_LINES = 120


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modules: dict[str, Path], package: str) -> set[str]:
    """gpuplan modules a module imports anywhere (functions too), except under `if TYPE_CHECKING:`."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in out if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(ast.parse(path.read_text()), modules, package) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_anywhere():
    assert _cycles(_graph()) == []


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_memory_math_imports_only_the_model_layer():
    """calc/ and engines/ read models, units and errors (and the result types they fill in), never the facade,
    the planner, plan files, sweeps, the CLI or the GPU catalog."""
    graph = _graph()
    allowed = ("gpuplan.calc", "gpuplan.engines", "gpuplan.models", "gpuplan.units", "gpuplan.errors",
               "gpuplan.results", "gpuplan.data_files")
    for module in graph:
        if module.startswith(("gpuplan.calc", "gpuplan.engines")):
            outside = sorted(m for m in _reaches(graph, module) if not m.startswith(allowed))
            assert outside == [], f"{module} reaches {outside}"


def test_no_function_is_longer_than_120_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def test_engine_names_are_compared_only_through_the_registry():
    """Outside gpuplan/engines/, code asks the registry (SERVING_ENGINES, LLAMACPP, engine_name) rather than
    spelling an engine's name in a comparison."""
    compared = re.compile(r"""(==|!=|\bin\b)\s*\(?["'](vllm|sglang|llama\.cpp|transformers)["']""")
    hits = []
    for name, path in _modules().items():
        if name.startswith("gpuplan.engines") or name.startswith("gpuplan.verify"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if compared.search(line):
                hits.append(f"{name}:{number}: {line.strip()}")
    assert hits == []
