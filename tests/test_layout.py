"""The architecture, checked: imports flow web -> services -> {protocol, crdt, storage} -> records
and errors; the wire protocol and the value types stand alone; SQL stays in storage.

Rules are keyed by a place in the package (a package, a sub-package or a module, written as a
path: ``storage/sqlite``, ``crdt``) and apply to everything under it; a module is forbidden
together with everything under it (``storage.sqlite`` covers ``storage.sqlite.engine``).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "heaper_trio"

# place -> modules of heaper_trio it must not import
FORBIDDEN: dict[str, set[str]] = {
    "storage": {"services", "web", "app", "cli"},
    "storage/sqlite": {"storage.postgres"},  # the engines share rules, not each other
    "storage/postgres": {"storage.sqlite"},
    "services": {"web", "app", "cli"},
    "services/live": {"services.scans", "services.media"},
    "services/scans": {"services.live"},  # progress goes out through an injected callable
    "services/media": {"services.live", "services.scans"},
    "crdt": {"services", "storage", "web", "app", "cli"},
    # web reaches storage only through services, never an engine or the storage interface
    "web": {"cli", "storage.sqlite", "storage.postgres", "storage.base"},
    # the client talks to a server over the wire only: the pure protocol and keys, no layer
    # of the server (its CRDT handling included: the client builds documents as any Yjs
    # client does, so the docs' examples check the server against an independent writer)
    "client": {"services", "storage", "web", "app", "cli", "crdt", "errors"},
    # backup and restore reach the data through storage (snapshot) and files, not a server
    "ops": {"services", "web", "app", "cli"},
}
# places that import only the standard library and themselves: the pure wire protocol
# (h11's rule: no I/O, no framework), the value types every layer shares, the error tree
SELF_CONTAINED = ("protocol", "records", "errors")
# third-party package -> the places that may import it: the server's CRDT layer, and the
# client library (a client builds and merges its own documents)
# and prometheus_client: its metric objects live in one module (services/metrics.py)
ONLY_IMPORTER = {"pycrdt": ("crdt", "client"), "prometheus_client": ("services/metrics",)}
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "storage": {"quart", "hypercorn", "quart_trio", "werkzeug"},
    "services": {"quart", "hypercorn", "quart_trio", "werkzeug"},
}
ENGINES = ("storage.sqlite", "storage.postgres")
SQL = re.compile(
    r"\b(SELECT\s+.+\s+FROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b", re.I | re.S
)


def place(path: Path) -> str:
    """``heaper_trio/storage/sqlite/engine.py`` -> ``storage/sqlite/engine``."""
    rel = path.relative_to(PKG).with_suffix("")
    return rel.as_posix().removesuffix("/__init__")


def under(where: str, key: str) -> bool:
    return where == key or where.startswith(key + "/")


def names(module: str, prefix: str) -> bool:
    """Whether ``module`` (dotted, inside heaper_trio) is ``prefix`` or lies under it."""
    return module == prefix or module.startswith(prefix + ".")


def imports(path: Path) -> set[str]:
    """Every module the file imports, absolute and dotted; ``from a import b`` counts ``a``
    and ``a.b`` (b may be a module); relative imports are resolved."""
    package = ["heaper_trio", *path.relative_to(PKG).parent.parts]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if a.name != "*"}
    return out


def inner(module: str) -> str | None:
    """``heaper_trio.storage.base`` -> ``storage.base``; None outside the package."""
    pieces = module.split(".")
    if pieces[0] != "heaper_trio" or len(pieces) == 1:
        return None
    return ".".join(pieces[1:])


def violations(where: str, modules: set[str]) -> list[str]:
    """What a file at ``where`` importing ``modules`` breaks, one line per broken rule."""
    found: list[str] = []
    for mod in sorted(modules):
        own, top = inner(mod), mod.split(".")[0]
        for key, banned in FORBIDDEN.items():
            if under(where, key) and own is not None:
                found += [
                    f"{where} imports {mod} ({key} must not import {b})"
                    for b in banned
                    if names(own, b)
                ]
            if under(where, key) and own is None and top in FORBIDDEN_THIRD_PARTY.get(key, ()):
                found.append(f"{where} imports {mod} ({key} must not import {top})")
        for key in SELF_CONTAINED:
            if not under(where, key):
                continue
            if own is not None and not names(own, key.replace("/", ".")):
                found.append(f"{where} imports {mod} ({key} imports only itself)")
            if own is None and top != "heaper_trio" and top not in sys.stdlib_module_names:
                found.append(f"{where} imports {mod} ({key} imports only the standard library)")
        if top in ONLY_IMPORTER and not any(under(where, p) for p in ONLY_IMPORTER[top]):
            only = " and ".join(ONLY_IMPORTER[top])
            found.append(f"{where} imports {mod} (only {only} import {top})")
    return found


def sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_imports_flow_one_way() -> None:
    broken = [line for path in sources() for line in violations(place(path), imports(path))]
    assert not broken, "\n".join(broken)


def test_the_rules_name_real_places() -> None:
    """A misspelt place or module would make its rule hold vacuously."""
    places = {place(p) for p in sources()}

    def exists(key: str) -> bool:
        return any(under(p, key) for p in places)

    importers = [p for places in ONLY_IMPORTER.values() for p in places]
    keys = [*FORBIDDEN, *SELF_CONTAINED, *FORBIDDEN_THIRD_PARTY, *importers]
    assert [k for k in keys if not exists(k)] == []
    modules = {m for banned in FORBIDDEN.values() for m in banned} | set(ENGINES)
    assert [m for m in modules if not exists(m.replace(".", "/"))] == []


def test_the_checker_catches_each_kind_of_rule() -> None:
    assert violations("web/routes_x", {"heaper_trio.storage.sqlite.engine"})
    assert violations("web/routes_x", {"heaper_trio.storage.base"})
    assert violations("storage/postgres/engine", {"heaper_trio.storage.sqlite.runtime"})
    assert violations("services/media/service", {"quart"})
    assert violations("protocol/wire", {"trio"})
    assert violations("protocol/wire", {"heaper_trio.errors"})
    assert violations("records", {"heaper_trio.storage"})
    assert violations("services/live/hub", {"pycrdt"})
    assert violations("client/live", {"heaper_trio.services.live.hub"})
    assert violations("client/blocks", {"heaper_trio.crdt"})
    assert not violations("client/blocks", {"pycrdt", "heaper_trio.protocol.messages"})
    assert not violations("protocol/wire", {"__future__", "dataclasses", "heaper_trio.protocol"})
    assert not violations("web/routes_x", {"heaper_trio.storage.errors", "heaper_trio.records"})
    assert not violations("crdt", {"pycrdt", "heaper_trio.protocol.wire"})
    assert imports(PKG / "storage" / "__init__.py") >= {"heaper_trio.storage.base"}


def test_only_storage_picks_an_engine() -> None:
    """Engines are chosen by ``storage.make_storage`` from the settings, nowhere else."""
    broken = [
        f"{place(path)} imports {mod}"
        for path in sources()
        if not under(place(path), "storage")
        for mod in imports(path)
        if any(names(inner(mod) or "", e) for e in ENGINES)
    ]
    assert not broken, "\n".join(broken)


def test_no_sql_outside_storage() -> None:
    for path in sources():
        if under(place(path), "storage"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL.search(node.value), f"SQL in {path}: {node.value[:60]!r}"


def test_modules_stay_small() -> None:
    for path in sources():
        lines = len(path.read_text().splitlines())
        assert lines <= 500, f"{path} has {lines} lines; split it by concern"
