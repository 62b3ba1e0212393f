#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, run the static checks
# (scripts/lint.sh: ruff check, ruff format --check, mypy), then the whole suite on both engines
# with a coverage report. This is the README's test command and what .ci/run calls; developers
# run exactly this.
#
#   bash scripts/test.sh [pytest args...]
#
# The suite runs on HEAPER_TEST_WORKERS pytest-xdist workers (default: the CPU count, at most 4;
# `-n 0` among the pytest args runs it in one process), except the tests marked serial (see
# SERIAL in tests/conftest.py), which run after it, one at a time. HEAPER_LINT=0 skips the
# static checks, HEAPER_LINT=1 runs them.
#
# System packages: PostgreSQL (the second storage engine; a throwaway cluster is started
# for the run and stopped after) and ffmpeg (video frames). Node packages for the interop
# tests are installed with `npm ci` wherever a package-lock.json sits under tests/.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

need_apt=()
command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
    || need_apt+=(postgresql)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
if ((${#need_apt[@]})); then
    echo "== apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need_apt[@]}" >/dev/null
fi

echo "== python environment (.venv)"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import heaper_trio, pytest_trio, hypothesis, xdist, pytest_cov" # fail here

# Static checks first: they take seconds, the suite minutes.
HEAPER_LINT=${HEAPER_LINT:-1}  # HEAPER_LINT=0 skips them (a quick local run)
if [[ $HEAPER_LINT == 1 ]]; then
    bash scripts/lint.sh
fi

while IFS= read -r lock; do
    echo "== npm ci in $(dirname "$lock")"
    (cd "$(dirname "$lock")" && npm ci --no-audit --no-fund --loglevel=error)
done < <(find tests -name package-lock.json -not -path "*/node_modules/*")

if [[ -z "${HEAPER_TEST_DATABASE_URL:-}" ]]; then
    PGDIR=$(mktemp -d /tmp/heaper-pg.XXXXXX)
    trap 'scripts/pg_cluster.sh stop "$PGDIR" >/dev/null 2>&1 || true; rm -rf "$PGDIR"' EXIT
    echo "== throwaway PostgreSQL in $PGDIR"
    HEAPER_TEST_DATABASE_URL=$(scripts/pg_cluster.sh start "$PGDIR")
    export HEAPER_TEST_DATABASE_URL
fi
export HEAPER_TEST_REQUIRE_POSTGRES=1
export HEAPER_TEST_REQUIRE_NODE=1  # the Yjs interop tests must run, not skip

# Two runs, one coverage report. First everything but the tests marked serial, on xdist
# workers (more than 4 would mostly add PostgreSQL connections, ~10 per worker's servers, and
# load); then the serial ones (timed against the wall clock) alone, one at a time.
workers=${HEAPER_TEST_WORKERS:-$(($(nproc) < 4 ? $(nproc) : 4))}
echo "== pytest on $workers workers"
parallel=0 serial=0
.venv/bin/python -m pytest -n "$workers" --dist loadgroup --cov=heaper_trio --cov-report= \
    "$@" --serial skip || parallel=$?
echo "== pytest, the serial tests"
.venv/bin/python -m pytest --cov=heaper_trio --cov-append --cov-report=term:skip-covered \
    "$@" --serial only -n 0 || serial=$?
# Exit status 5 is "no tests collected": a selection (-k, a path) may hold one kind only.
if ((parallel == 5 && serial == 5)); then exit 5; fi
for rc in "$parallel" "$serial"; do
    if ((rc != 0 && rc != 5)); then exit "$rc"; fi
done
