#!/usr/bin/env bash
# A long Schemathesis run: a fresh server on a temporary data directory (SQLite unless
# --database-url is given), a real login and real ids, then `st run --checks all` over every
# operation of /api/openapi.json. Prints st's report and a TOTALS line; exits non-zero on any
# failure, or on any 401 to one of the run's real tokens (an operation never reached). The CI
# run of the same code is tests/test_fuzz_api.py (fewer examples).
#
#   bash scripts/fuzz.sh [--examples N] [--seed S] [--max-time SECONDS] [--workers N]
#                        [--database-url postgresql://...]
#
# Defaults: 500 examples per operation and phase, the suite's seed, no time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[[ -x $PY ]] || PY=python3
"$PY" -c "import schemathesis" 2>/dev/null || {
    echo "schemathesis is missing: pip install -e '.[test]'" >&2
    exit 2
}
exec "$PY" -m tests.test_fuzz_api "$@"
