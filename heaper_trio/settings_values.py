"""How a setting's raw value is read, the same wherever it comes from (environment, TOML, flag),
and the checks on where settings come from: the rules ``settings`` applies to its registry.

- A boolean is ``true/false``, ``yes/no``, ``on/off`` or ``1/0`` in any case, a TOML boolean,
  or the TOML integers 1 and 0; anything else is refused (``auto_approve = 3`` is a typo).
- A ``HEAPER_*`` variable nothing reads is named with the closest known one.
- A data directory that is, or lies under, a file is refused in words.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_BOOL_WORDS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}

# HEAPER_* variables that are not settings but are read by name elsewhere (the config file,
# the test suite and its scripts, the docs' examples): never warned about
OTHER_ENV = ("HEAPER_CONFIG", "HEAPER_LINT", "HEAPER_KEY_FILE")
OTHER_ENV_PREFIXES = ("HEAPER_TEST_", "HEAPER_FUZZ_")


def parse_bool(raw: Any) -> bool:
    """The one boolean rule; anything else is a ValueError."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[raw.strip().lower()]
    raise ValueError(f"not a boolean: {raw!r}")


def unknown_variables(environ: Mapping[str, str], settings_env: Iterable[str]) -> list[str]:
    """One line per HEAPER_* variable that no setting reads, naming the closest known one:
    a misspelt variable would otherwise be silently ignored."""
    known = [*settings_env, *OTHER_ENV]
    lines = []
    for name in sorted(environ):
        if not name.startswith("HEAPER_") or name in known or name.startswith(OTHER_ENV_PREFIXES):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (see docs/configuration.md)"
        lines.append(f"unknown environment variable {name} is ignored{hint}")
    return lines


def check_data_dir(value: str) -> str | None:
    """Refuse, in words, a data directory that is or lies under an existing non-directory
    (mkdir would say only "File exists" or "Not a directory")."""
    path = Path(value).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if p.is_dir():
                return None
            if p == path:
                return f"{path} is a file, not a directory"
            return f"{path} cannot be a directory: {p} is a file"
    return None
