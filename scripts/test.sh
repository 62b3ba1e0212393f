#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, run the static checks
# (scripts/lint.sh: ruff check, ruff format --check, mypy), then the whole suite on both engines
# (a coverage report on request, see below). This is the README's test command and what .ci/run calls; developers
# run exactly this.
#
#   bash scripts/test.sh [pytest args...]
#
# The suite runs on HEAPER_TEST_WORKERS pytest-xdist workers (default: the CPU count, at most 4;
# `-n 0` among the pytest args runs it in one process), except the tests marked serial (see
# SERIAL in tests/conftest.py), which run after it, one at a time. HEAPER_LINT=0 skips the
# static checks, HEAPER_LINT=1 runs them. HEAPER_TEST_COVERAGE=1 adds a coverage report
# (branch coverage of heaper_trio over both runs). It is off by default: on Python 3.11,
# tracing every line of the in-process servers nearly doubles the suite's CPU time (measured
# on tests/test_sync.py: 17.6 s of CPU without, 30.9 s with) and no check depends on it.
#
# A quick run (the README's second command) needs neither PostgreSQL nor Node:
#
#   HEAPER_LINT=0 HEAPER_TEST_REQUIRE_NODE=0 bash scripts/test.sh --engine sqlite
#
# `--engine sqlite` alone (no `--engine postgres`) installs and starts no PostgreSQL and does
# not require it; HEAPER_TEST_REQUIRE_NODE=0 skips `npm ci` and lets the Node tests skip.
# Without these the run is the full one, what CI does.
#
# The .venv: created with an editable install of `.[test]` when it has no heaper_trio (a fresh
# clone, CI). A .venv that already holds an editable install is refreshed the same way. One
# holding a regular install (the README's `pip install .`) keeps it: only the dependencies and
# the test extras are installed, and the tests run the working tree (pytest starts from here).
#
# System packages: PostgreSQL (the second storage engine; a throwaway cluster is started
# for the run and stopped after), ffmpeg (video frames), eatmydata (see below) and, in full
# runs, chromium and chromium-driver (tests/test_admin_browser.py; HEAPER_TEST_REQUIRE_BROWSER=1
# there). Node packages for the interop tests are installed with `npm ci` wherever a
# package-lock.json sits under tests/.
#
# Speed, not what is tested: the pytest runs go through eatmydata (fsync becomes a no-op, so
# SQLite commits and stored files do not wait on the disk), the throwaway PostgreSQL runs with
# fsync off, and Python writes its bytecode caches (PYTHONDONTWRITEBYTECODE, set on some
# machines, made every pytest worker and server subprocess recompile and re-rewrite its
# imports: ~11 s of CPU per pytest process). No test can observe fsync: crashes in the suite
# are killed processes, whose writes the kernel keeps.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

# The engines this run covers: `--engine sqlite` alone needs no PostgreSQL.
engines=() prev=""
for arg in "$@"; do
    [[ $prev == --engine ]] && engines+=("$arg")
    [[ $arg == --engine=* ]] && engines+=("${arg#--engine=}")
    prev=$arg
done
need_pg=1
if ((${#engines[@]})) && [[ " ${engines[*]} " != *" postgres "* ]]; then need_pg=0; fi
HEAPER_TEST_REQUIRE_NODE=${HEAPER_TEST_REQUIRE_NODE:-1}

need_apt=()
if ((need_pg)); then
    command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
        || need_apt+=(postgresql)
    command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
fi
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v eatmydata >/dev/null 2>&1 || need_apt+=(eatmydata)
if ((need_pg)); then  # a full run: the admin page's test drives a real headless Chromium
    command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
    [[ -x /usr/bin/chromedriver ]] || need_apt+=(chromium-driver)
fi
if ((${#need_apt[@]})); then
    echo "== apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need_apt[@]}" >/dev/null
fi

echo "== python environment (.venv)"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# -I: the check must not see this checkout (or its .egg-info) through the current directory
install=$(.venv/bin/python -I -c '
import json
from importlib import metadata
try:
    raw = metadata.distribution("heaper_trio").read_text("direct_url.json") or "{}"
except metadata.PackageNotFoundError:
    print("none")
else:
    print("editable" if json.loads(raw).get("dir_info", {}).get("editable") else "regular")
')
if [[ $install == regular ]]; then
    echo "== .venv holds a regular (non-editable) heaper_trio install: kept as it is;" \
        "installing its dependencies and the test extras only (the tests run the working tree)"
    .venv/bin/python -m pip install -q -r <(.venv/bin/python -I -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
') 2>&1 | grep -v "^WARNING: Location" || true
else
    .venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -c "import heaper_trio, pytest_trio, hypothesis, xdist, pytest_cov" # fail here

# Static checks first: they take seconds, the suite minutes.
HEAPER_LINT=${HEAPER_LINT:-1}  # HEAPER_LINT=0 skips them (a quick local run)
if [[ $HEAPER_LINT == 1 ]]; then
    bash scripts/lint.sh
fi

if [[ $HEAPER_TEST_REQUIRE_NODE == 1 ]]; then
    while IFS= read -r lock; do
        echo "== npm ci in $(dirname "$lock")"
        (cd "$(dirname "$lock")" && npm ci --no-audit --no-fund --loglevel=error)
    done < <(find tests -name package-lock.json -not -path "*/node_modules/*")
else
    echo "== HEAPER_TEST_REQUIRE_NODE=$HEAPER_TEST_REQUIRE_NODE: no npm ci, Node tests may skip"
fi

if ((need_pg)) && [[ -z "${HEAPER_TEST_DATABASE_URL:-}" ]]; then
    PGDIR=$(mktemp -d /tmp/heaper-pg.XXXXXX)
    trap 'scripts/pg_cluster.sh stop "$PGDIR" >/dev/null 2>&1 || true; rm -rf "$PGDIR"' EXIT
    echo "== throwaway PostgreSQL in $PGDIR"
    HEAPER_TEST_DATABASE_URL=$(scripts/pg_cluster.sh start "$PGDIR")
    export HEAPER_TEST_DATABASE_URL
    # A throwaway cluster: nothing in it must survive a power cut (see "Speed" above)
    psql -q -v ON_ERROR_STOP=1 "$HEAPER_TEST_DATABASE_URL" -c "ALTER SYSTEM SET fsync = off" \
        -c "ALTER SYSTEM SET synchronous_commit = off" -c "ALTER SYSTEM SET full_page_writes = off" \
        -c "SELECT pg_reload_conf()" >/dev/null
fi
# By default PostgreSQL, the Yjs interop tests and (full runs) the browser test must run, not skip
if ((need_pg)); then
    export HEAPER_TEST_REQUIRE_POSTGRES=1
    export HEAPER_TEST_REQUIRE_BROWSER=${HEAPER_TEST_REQUIRE_BROWSER:-1}
fi
export HEAPER_TEST_REQUIRE_NODE

# Two runs, one coverage report. First everything but the tests marked serial, on xdist
# workers (more than 4 would mostly add PostgreSQL connections, ~10 per worker's servers, and
# load); then the serial ones (timed against the wall clock) alone, one at a time.
workers=${HEAPER_TEST_WORKERS:-$(($(nproc) < 4 ? $(nproc) : 4))}
unset PYTHONDONTWRITEBYTECODE
fast=()
command -v eatmydata >/dev/null 2>&1 && fast=(eatmydata)
cov_parallel=() cov_serial=()
if [[ ${HEAPER_TEST_COVERAGE:-0} == 1 ]]; then
    cov_parallel=(--cov=heaper_trio --cov-report=)
    cov_serial=(--cov=heaper_trio --cov-append --cov-report=term:skip-covered)
fi
echo "== pytest on $workers workers"
parallel=0 serial=0
"${fast[@]}" .venv/bin/python -m pytest -n "$workers" --dist loadgroup "${cov_parallel[@]}" \
    "$@" --serial skip || parallel=$?
echo "== pytest, the serial tests"
"${fast[@]}" .venv/bin/python -m pytest "${cov_serial[@]}" "$@" --serial only -n 0 || serial=$?
# Exit status 5 is "no tests collected": a selection (-k, a path) may hold one kind only.
if ((parallel == 5 && serial == 5)); then exit 5; fi
for rc in "$parallel" "$serial"; do
    if ((rc != 0 && rc != 5)); then exit "$rc"; fi
done
