#!/usr/bin/env bash
# The real servers the adapters are tested against: redis-server (AOF, appendfsync always) and
# nats-server with JetStream, on private loopback ports, with their data under one directory.
#
#   scripts/services.sh start    install what is missing (apt-get, as root), start both, wait
#                                until they answer, write $NET_SERVICES_DIR/env
#   scripts/services.sh stop     stop both (SIGTERM, then SIGKILL), keep the data
#   scripts/services.sh status   say what runs
#   scripts/services.sh clean    stop both and remove the data
#
# $NET_SERVICES_DIR (default /tmp/net-services) holds redis/ and nats/ (data and logs), the
# pid files and `env`, which tests source or read: NET_REDIS_URL, NET_NATS_URL and the ports.
# Ports: $NET_REDIS_PORT (default 16379) and $NET_NATS_PORT (default 14222).
#
# Under CI (CI=true) a server that cannot be installed or started fails the script; elsewhere
# the script says so loudly and exits 0, and the adapter tests report themselves skipped.
set -euo pipefail

dir="${NET_SERVICES_DIR:-/tmp/net-services}"
redis_port="${NET_REDIS_PORT:-16379}"
nats_port="${NET_NATS_PORT:-14222}"
ci="${CI:-}"

say() { echo "services: $*" >&2; }

fail() {
    say "$*"
    if [ "$ci" = "true" ]; then
        exit 1
    fi
    say "NOT IN CI: continuing without it; the adapter tests will say they were skipped"
    exit 0
}

install_missing() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        fail "missing ${missing[*]} and not root: install them (apt-get install ${missing[*]})"
    fi
    say "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
        || fail "apt-get could not install ${missing[*]}"
    # The Debian packages start system-wide instances on the default ports; ours are private.
    systemctl disable --now redis-server nats-server >/dev/null 2>&1 || true
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {
    local what=$1 check=$2
    for _ in $(seq 1 100); do
        if eval "$check" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    fail "$what did not answer within 10 s (see its log under $dir)"
}

start() {
    install_missing
    mkdir -p "$dir/redis" "$dir/nats"
    if running "$dir/redis.pid"; then
        say "redis-server already runs (pid $(cat "$dir/redis.pid"))"
    else
        redis-server --port "$redis_port" --bind 127.0.0.1 --protected-mode yes \
            --dir "$dir/redis" --appendonly yes --appendfsync always \
            --save '' --daemonize yes --pidfile "$dir/redis.pid" \
            --logfile "$dir/redis/redis.log" \
            || fail "redis-server did not start (see $dir/redis/redis.log)"
        wait_for "redis-server on port $redis_port" \
            "redis-cli -p $redis_port ping | grep -q PONG"
    fi
    if running "$dir/nats.pid"; then
        say "nats-server already runs (pid $(cat "$dir/nats.pid"))"
    else
        # Detached, and holding none of the caller's descriptors (a pipe the caller reads
        # would otherwise never close).
        setsid nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$dir/nats" \
            -l "$dir/nats/nats.log" -P "$dir/nats.pid" </dev/null >>"$dir/nats/nats.out" 2>&1 &
        wait_for "nats-server on port $nats_port" \
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/$nats_port; head -c 4 <&3 | grep -q INFO'"
    fi
    cat >"$dir/env" <<EOF
NET_REDIS_PORT=$redis_port
NET_REDIS_URL=redis://127.0.0.1:$redis_port
NET_NATS_PORT=$nats_port
NET_NATS_URL=nats://127.0.0.1:$nats_port
NET_SERVICES_DIR=$dir
EOF
    say "redis-server on 127.0.0.1:$redis_port, nats-server (JetStream) on 127.0.0.1:$nats_port; data in $dir"
}

stop_one() {
    local name=$1 pidfile=$2
    if ! running "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    local pid
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name did not stop in 5 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop() {
    stop_one redis-server "$dir/redis.pid"
    stop_one nats-server "$dir/nats.pid"
}

status() {
    for s in redis nats; do
        if running "$dir/$s.pid"; then
            echo "$s: running (pid $(cat "$dir/$s.pid"))"
        else
            echo "$s: stopped"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    clean)
        stop
        rm -rf "$dir"
        ;;
    *)
        echo "usage: $0 start|stop|status|clean" >&2
        exit 2
        ;;
esac
