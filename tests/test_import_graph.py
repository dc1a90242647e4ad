"""Dependencies point one way: no import cycle between the top-level packages and modules of
crm_ledger (issue 9), read from the source with `ast`, lazy imports inside functions included.

A node is a top-level package (`indexer`, `crm`, ...) or module (`runtime`, `config`, ...);
an edge A -> B is any import in A's files of something in B. Migrations are left out (a
migration may use the code of its day). The verifier's own, stricter rule (no SQLAlchemy,
FastAPI or web3, nothing of the service but the ledger format) is `tests/verifier/test_imports.py`;
here it is checked again at the level of packages.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

import crm_ledger

PACKAGE = Path(crm_ledger.__file__).parent

#: Edges allowed to close a cycle (none: keep it that way).
OWNED_ELSEWHERE: dict[tuple[str, str], str] = {}

Graph = Mapping[str, Mapping[str, set[str]]]


def node_of(path: Path) -> str:
    """The top-level package or module a source file belongs to."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _module_of(path: Path) -> list[str]:
    parts = ["crm_ledger", *path.relative_to(PACKAGE).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_names(path: Path) -> Iterator[tuple[str, int]]:
    """Every dotted name `path` imports (with `from x import y`, both `x` and `x.y`)."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            yield source, node.lineno
            for alias in node.names:
                yield f"{source}.{alias.name}", node.lineno


def import_graph() -> dict[str, dict[str, set[str]]]:
    """node -> imported node -> the `file:line`s that make the edge."""
    nodes = {node_of(p) for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    nodes -= {"__init__", "__pycache__"}
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.relative_to(PACKAGE).parts:
            continue
        source = node_of(path)
        if source == "__init__":
            continue
        for name, line in imported_names(path):
            parts = name.split(".")
            if parts[0] != "crm_ledger" or len(parts) < 2 or parts[1] not in nodes:
                continue
            if parts[1] != source:
                graph[source][parts[1]].add(f"{path.relative_to(PACKAGE)}:{line}")
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _without(graph: Graph, edges: Mapping[tuple[str, str], str]) -> Graph:
    return {
        source: {t: where for t, where in targets.items() if (source, t) not in edges}
        for source, targets in graph.items()
    }


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    edge = {"x.py:1"}
    assert cycles({"a": {"b": edge}, "b": {"c": edge}, "c": {"a": edge}, "d": {"a": edge}}) == [
        ["a", "b", "c"]
    ]
    assert cycles({"a": {"b": edge}, "b": {"c": edge}, "d": {"a": edge}}) == []


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    graph = import_graph()
    # `roles.py` imports each integration's worker inside a function body.
    assert "ingest" in graph["roles"] and "outbound" in graph["roles"]
    # The indexer writes the change feed (`from crm_ledger import feed`).
    assert "feed" in graph["indexer"]


def test_no_import_cycle_between_top_level_packages() -> None:
    graph = _without(import_graph(), OWNED_ELSEWHERE)
    found = cycles(graph)
    explained = [
        f"{a} -> {b}: {', '.join(sorted(graph[a][b]))}"
        for component in found
        for a in component
        for b in sorted(graph.get(a, {}))
        if b in component
    ]
    assert found == [], "\n".join(explained)


def test_the_allowed_edges_still_exist() -> None:
    # An allow-list entry whose import is gone must go too, or it would hide a new cycle.
    graph = import_graph()
    assert [edge for edge in OWNED_ELSEWHERE if edge[1] not in graph.get(edge[0], {})] == []


def test_the_verifier_depends_on_the_ledger_format_alone() -> None:
    assert set(import_graph().get("verifier", {})) <= {"ledger", "errors"}
