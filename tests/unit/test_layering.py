"""The core leans on no edge: nothing it imports, directly or not, reaches connectors/ or
simulators/. Only the composition root (cli, serve, wiring) and the flows' format rules do."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BROKER = ROOT / "broker"
EDGES = ("connectors", "simulators")
# Wires the core to the edges; flows may use the formats their connectors read.
COMPOSITION = {"broker.cli", "broker.serve", "broker.wiring", "broker.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


GRAPH = {module_name(p): imports_of(p) for p in BROKER.rglob("*.py")
         if "migrations" not in p.parts}


def reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        current = todo.pop()
        for target in GRAPH.get(current, ()):
            if target not in seen:
                seen.add(target)
                if target in GRAPH and not target.startswith("broker.flows."):
                    todo.append(target)
    return seen


def is_core(name: str) -> bool:
    return name not in COMPOSITION and not name.startswith("broker.flows.")


def test_no_core_module_reaches_connectors_or_simulators() -> None:
    leaks = {}
    for name in sorted(n for n in GRAPH if is_core(n)):
        edge = sorted(t for t in reaches(name) if t.split(".")[0] in EDGES)
        if edge:
            leaks[name] = edge
    assert leaks == {}


def test_the_core_imports_no_flow_of_its_own_but_the_base() -> None:
    wrong = {name: sorted(t for t in GRAPH[name] if t.startswith("broker.flows.")
                          and not t.startswith("broker.flows.base"))
             for name in GRAPH if is_core(name)}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_check_sees_the_imports_it_should() -> None:
    # A check that found nothing would pass for the wrong reason.
    assert "connectors.depot.connector" in reaches("broker.wiring") or any(
        t.startswith("connectors.") for t in reaches("broker.wiring"))
    assert "broker.connector" in reaches("broker.worker")


# What a module outside the store may take from SQLAlchemy: connection types to pass
# along and the errors to catch. Statements, tables and execution stay in broker/store/.
SQL_ALLOWED = {"sqlalchemy.ext.asyncio", "sqlalchemy.exc"}


def sql_uses(path: Path) -> list[str]:
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name.startswith("sqlalchemy") and not any(
                    name == ok or name.startswith(ok + ".") for ok in SQL_ALLOWED):
                found.append(f"imports {name}")
            if name.startswith("broker.store.schema"):
                found.append("imports the tables")
        if isinstance(node, ast.Attribute) and node.attr in ("execute", "exec_driver_sql"):
            found.append(f"calls .{node.attr}() at line {node.lineno}")
    return found


def test_no_module_outside_the_store_runs_sql() -> None:
    offenders = {}
    for path in sorted([*BROKER.rglob("*.py"), *(ROOT / "connectors").rglob("*.py")]):
        if "store" in path.relative_to(ROOT).parts[:2]:
            continue
        if uses := sql_uses(path):
            offenders[str(path.relative_to(ROOT))] = uses
    assert offenders == {}


def test_the_sql_check_sees_sql() -> None:
    assert sql_uses(BROKER / "store" / "jobs.py"), "the store's own SQL should be seen"
