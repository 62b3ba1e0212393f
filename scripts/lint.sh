#!/usr/bin/env bash
# The static checks CI runs before the tests (scripts/test.sh calls this): ruff's lint rules and
# formatting, and mypy (strict on heaper_trio.protocol; the benchmarks in scripts/ are checked
# too, so CI keeps them runnable). Rules and options live in pyproject.toml. Nothing here
# rewrites a file; to apply ruff's fixes:
#
#   .venv/bin/ruff check --fix heaper_trio tests scripts
#   .venv/bin/ruff format heaper_trio tests scripts
set -euo pipefail
cd "$(dirname "$0")/.."

failed=()  # every check runs, so one report shows all that is wrong
echo "== ruff check"
.venv/bin/ruff check heaper_trio tests scripts || failed+=("ruff check")
echo "== ruff format --check"
.venv/bin/ruff format --check heaper_trio tests scripts || failed+=("ruff format --check")
echo "== mypy"
.venv/bin/mypy heaper_trio || failed+=(mypy)
.venv/bin/mypy scripts || failed+=("mypy scripts")
if ((${#failed[@]})); then
    echo "lint: failed: ${failed[*]}" >&2
    exit 1
fi
