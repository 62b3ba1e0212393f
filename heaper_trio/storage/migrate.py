"""The numbered migration scripts of each engine, read from the package.

Neutral ground: both engines apply their own folder (``migrations/sqlite``,
``migrations/postgres``) with their own locking, so neither imports the other to find them.
"""

from __future__ import annotations

from importlib import resources


def migration_scripts(engine: str) -> list[tuple[int, str, str]]:
    """Numbered ``NNNN_name.sql`` files of an engine, in order: (version, name, sql)."""
    folder = resources.files("heaper_trio.storage") / "migrations" / engine
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name[:-4], entry.read_text()))
    return sorted(out)
