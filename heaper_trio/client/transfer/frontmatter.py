"""YAML front matter: written with PyYAML's safe dumper (keys in a fixed order), read
leniently, since a vault's notes are written by hand: a note whose front matter does not
parse keeps it as text and gets none."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import yaml  # type: ignore[import-untyped]  # no stubs in the venv; safe_load/safe_dump only

MAX_BYTES = 64 << 10


class _NoAliases(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no stubs here
    """Anchors and aliases refused: a few lines of them expand into a billion list items
    ("billion laughs") once anything walks the value."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not read in front matter")
        return super().compose_node(parent, index)


_BLOCK = re.compile(r"\A---[ \t]*\r?\n(.*?\r?\n)?---[ \t]*(?:\r?\n|\Z)", re.S)


def write(fields: dict[str, Any]) -> str:
    kept = {k: v for k, v in fields.items() if v not in (None, [], "")}
    text = yaml.safe_dump(kept, allow_unicode=True, sort_keys=False, width=1 << 16)
    return f"---\n{text}---\n"


def split(text: str) -> tuple[dict[str, Any] | None, str]:
    """(front matter, body); None when there is none or it is not a YAML mapping."""
    m = _BLOCK.match(text)
    if m is None or len(m.group(0)) > MAX_BYTES:
        return None, text
    try:
        data = yaml.load(m.group(1) or "", Loader=_NoAliases) or {}  # a SafeLoader
    except yaml.YAMLError:
        return None, text
    if not isinstance(data, dict):
        return None, text
    return {str(k): v for k, v in data.items()}, text[m.end() :]


def iso(ms: int | float | None) -> str | None:
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return None
    try:  # a date a block carries may be any number: out of datetime's range is no date
        moment = datetime.fromtimestamp(ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None
    if moment.year < 1:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


def ms(value: Any) -> int | None:
    """A front matter date (ISO text, or a date YAML already read) as Unix milliseconds."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        stamp = int(moment.timestamp() * 1000)
        return stamp if iso(stamp) is not None else None  # only dates an export can write
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return ms(moment)
    if hasattr(value, "year") and hasattr(value, "month"):  # a date without time
        return ms(datetime(value.year, value.month, value.day, tzinfo=UTC))
    return None


def strings(value: Any) -> list[str]:
    """A front matter list (``[a, b]``, ``- a``) or a comma- or space-separated string."""
    if isinstance(value, str):
        return [s for s in re.split(r"[,\s]+", value) if s]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, str | int | float) and str(v)]
    return []
