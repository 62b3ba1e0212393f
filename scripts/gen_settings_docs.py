"""Regenerate config/heaper.example.toml and the settings table in docs/configuration.md.

Run after changing heaper_trio/settings.py: `python scripts/gen_settings_docs.py`.
tests/test_settings.py fails when either is out of date.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from heaper_trio.settings import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def example() -> str:
    out = [
        "# heaper_trio configuration. Every key is shown with its default, commented out.",
        "# Use it with: python -m heaper_trio --config config/heaper.example.toml",
        "# Environment variables (HEAPER_<KEY>) override this file; command-line flags override both.",  # noqa: E501
        "",
    ]
    for s in SETTINGS:
        for line in textwrap.wrap(s.help, 92):
            out.append(f"# {line}")
        if s.choices:
            out.append(f"# One of: {', '.join(s.choices)}.")
        out.append(f"# {s.name} = {toml_value(s.default)}")
        out.append("")
    return "\n".join(out)


def table() -> str:
    rows = ["| key | environment | flag | type | default | meaning |", "|---|---|---|---|---|---|"]
    for s in SETTINGS:
        flag = f"`{s.flag}`" if s.cli or s.name in ("data_dir", "database_url") else ""
        extra = f" One of: {', '.join(s.choices)}." if s.choices else ""
        rows.append(
            f"| `{s.name}` | `{s.env}` | {flag} | {s.type.__name__} | "
            f"`{toml_value(s.default)}` | {s.help}{extra} |"
        )
    return "\n".join(rows)


def main() -> None:
    (ROOT / "config" / "heaper.example.toml").write_text(example())
    doc_path = ROOT / "docs" / "configuration.md"
    doc = doc_path.read_text()
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc_path.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    main()
