#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for development and CI.
#
#   scripts/pg_cluster.sh start DIR [PORT]   init DIR (if needed), start it on 127.0.0.1,
#                                            print the DSN (the only line on stdout)
#   scripts/pg_cluster.sh stop DIR           stop it (a no-op if it is not running)
#
# Layout: DIR/data is the cluster, DIR holds the unix socket, DIR/postgres.log the server log
# and DIR/port the port in use. Auth is trust, superuser "postgres", fsync stays on.
# As root, initdb/pg_ctl run as the postgres user (DIR is chowned to it); otherwise they run
# as the caller. Everything but the DSN goes to stderr or the log.
set -euo pipefail

die() { echo "pg_cluster: $*" >&2; exit 1; }
usage() { die "usage: $0 start DIR [PORT] | stop DIR"; }

find_bindir() {
    local d
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; return; fi
    fi
    for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; return; fi
    done
    die "no PostgreSQL binaries found (pg_config --bindir, /usr/lib/postgresql/*/bin)"
}

# Run a command as the cluster owner: postgres when we are root, else ourselves.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

port_in_use() {  # a TCP connect that succeeds means someone is listening
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 40000))
        if ! port_in_use "$p"; then echo "$p"; return; fi
    done
    die "no free port found"
}

is_running() { as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

wait_ready() {
    local i
    for ((i = 0; i < 300; i++)); do
        if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -U postgres -d postgres; then return 0; fi
        sleep 0.1
    done
    return 1
}

cmd_start() {
    local port=${1:-}
    mkdir -p "$DIR"
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user"
        chown postgres: "$DIR"
        [[ -d "$DATA" ]] && chown -R postgres: "$DATA"
        as_owner test -w "$DIR" || die "user postgres cannot write $DIR (check its parent dirs)"
    fi

    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        as_owner "$BIN/initdb" -D "$DATA" -A trust -U postgres -E UTF8 --locale=C >&2 \
            || die "initdb failed"
    fi

    if is_running; then  # already up: report where, and keep it
        [[ -f "$DIR/port" ]] || die "a server runs in $DATA but $DIR/port is missing"
        local running
        running=$(<"$DIR/port")
        [[ -z "$port" || "$port" == "$running" ]] || die "already running on port $running"
        wait_ready "$running" || die "server in $DATA does not answer on port $running"
        echo "postgresql://postgres@127.0.0.1:$running/postgres"
        return
    fi

    local tries=1 fixed=1
    if [[ -z "$port" ]]; then fixed=0; tries=5; fi
    local i
    for ((i = 0; i < tries; i++)); do
        [[ $fixed -eq 1 ]] || port=$(pick_port)
        if as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/postgres.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k '$DIR' -c max_connections=200" \
            start >&2; then
            echo "$port" >"$DIR/port"
            wait_ready "$port" || die "server started but pg_isready fails; see $DIR/postgres.log"
            echo "postgresql://postgres@127.0.0.1:$port/postgres"
            return
        fi
        echo "pg_cluster: start on port $port failed; see $DIR/postgres.log" >&2
    done
    die "could not start the cluster in $DATA"
}

cmd_stop() {
    [[ -f "$DATA/PG_VERSION" ]] || { echo "pg_cluster: no cluster in $DATA" >&2; return 0; }
    if is_running; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >&2
    else
        echo "pg_cluster: not running" >&2
    fi
    rm -f "$DIR/port"
}

[[ $# -ge 2 ]] || usage
ACTION=$1
DIR=$(realpath -m -- "$2")
DATA="$DIR/data"
BIN=$(find_bindir)
# postgres (as root we run as that user) may not be allowed into the caller's cwd.
cd /

case "$ACTION" in
    start) [[ $# -le 3 ]] || usage; cmd_start "${3:-}" ;;
    stop) [[ $# -eq 2 ]] || usage; cmd_stop ;;
    *) usage ;;
esac
