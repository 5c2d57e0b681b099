"""Dependencies point one way: ledger imports only the stdlib, eventsourcing and msgspec."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_THIRD_PARTY = {"eventsourcing", "msgspec"}
FORBIDDEN_FOR = {
    "ledger": {"api", "projections", "litestar", "asyncpg", "psycopg", "uvicorn"},
    "projections": {"api", "litestar"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN_FOR))
def test_package_does_not_import_layers_above_it(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN_FOR[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_ledger_imports_only_stdlib_eventsourcing_and_msgspec():
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY | {"ledger", "__future__"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) - allowed)
        for path in (ROOT / "ledger").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
