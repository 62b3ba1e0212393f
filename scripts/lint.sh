#!/usr/bin/env bash
# The static checks CI runs before the tests (scripts/test.sh calls this): ruff's lint rules and
# formatting, and mypy (strict on heaper_trio.protocol). Rules and options live in
# pyproject.toml. Nothing here rewrites a file; to apply ruff's fixes:
#
#   .venv/bin/ruff check --fix heaper_trio tests scripts
#   .venv/bin/ruff format heaper_trio tests scripts
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== ruff check"
.venv/bin/ruff check heaper_trio tests scripts
echo "== ruff format --check"
.venv/bin/ruff format --check heaper_trio tests scripts
echo "== mypy"
.venv/bin/mypy heaper_trio
