"""The architecture, checked: imports flow web -> services -> storage, SQL stays in storage."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "heaper_trio"

# package part -> parts of heaper_trio it must not import
FORBIDDEN = {
    "storage": {"services", "web", "app", "cli"},
    "services": {"web", "app", "cli"},
    "web": {"cli"},
}
FORBIDDEN_THIRD_PARTY = {
    "storage": {"quart", "hypercorn", "quart_trio"},
    "services": {"quart", "hypercorn", "quart_trio"},
}
SQL = re.compile(r"\b(SELECT\s+.+\s+FROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b",
                 re.I | re.S)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def part_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_imports_flow_one_way() -> None:
    for path in PKG.rglob("*.py"):
        part = part_of(path)
        for mod in imports(path):
            pieces = mod.split(".")
            if pieces[0] == "heaper_trio" and len(pieces) > 1:
                assert pieces[1] not in FORBIDDEN.get(part, set()), f"{path}: imports {mod}"
            assert pieces[0] not in FORBIDDEN_THIRD_PARTY.get(part, set()), f"{path}: {mod}"


def test_no_sql_outside_storage() -> None:
    for path in PKG.rglob("*.py"):
        if part_of(path) == "storage":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL.search(node.value), f"SQL in {path}: {node.value[:60]!r}"


def test_modules_stay_small() -> None:
    for path in PKG.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 500, f"{path} has {lines} lines; split it by concern"
