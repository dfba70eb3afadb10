#!/usr/bin/env bash
# A loopback redis-server for the Redis tests, durable as walq's guarantees need
# (appendonly yes, appendfsync always, no RDB snapshots), in a temporary directory.
#
#   eval "$(bash .ci/redis.sh start)"    # installs redis-server if missing; prints
#                                        # `export WALQ_REDIS_URL=redis://127.0.0.1:PORT/0`
#   bash .ci/redis.sh stop               # stops that server, removes its directory
#
# Only the `export` line goes to stdout; progress goes to stderr. The server's
# directory is remembered in $WALQ_REDIS_STATE (default /tmp/walq-ci-redis.state),
# so `stop` finds it from another shell. Only the server this script started is
# ever signalled (by the pid in its own pidfile).
set -euo pipefail

STATE=${WALQ_REDIS_STATE:-${TMPDIR:-/tmp}/walq-ci-redis.state}

say() { echo "redis.sh: $*" >&2; }

install_server() {
    command -v redis-server >/dev/null 2>&1 && return 0
    say "installing redis-server (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q redis-server >&2; then
        apt-get update -q >&2
        apt-get install -y -q redis-server >&2
    fi
    command -v redis-server >/dev/null 2>&1 || { say "redis-server still missing"; exit 1; }
}

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

ping() {  # ping PORT: succeeds once the server answers PONG
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = "PONG" ]
    else
        exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
        printf 'PING\r\n' >&3
        local reply
        read -r -t 2 reply <&3 || true
        exec 3>&-
        [ "${reply%$'\r'}" = "+PONG" ]
    fi
}

start() {
    if [ -f "$STATE" ] && [ -f "$(cat "$STATE")/redis.pid" ] \
        && kill -0 "$(cat "$(cat "$STATE")/redis.pid")" 2>/dev/null; then
        say "already running from $(cat "$STATE")"
        echo "export WALQ_REDIS_URL=$(cat "$(cat "$STATE")/url")"
        return 0
    fi
    install_server
    local dir port tries=0
    dir=$(mktemp -d "${TMPDIR:-/tmp}/walq-redis.XXXXXX")
    echo "$dir" >"$STATE"
    while :; do
        tries=$((tries + 1))
        port=$(free_port)
        redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
            --dir "$dir" --appendonly yes --appendfsync always --save '' \
            --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
            --maxmemory-policy noeviction >&2 || true
        for _ in $(seq 1 100); do
            ping "$port" && break
            sleep 0.05
        done
        if ping "$port"; then
            break
        fi
        say "server on port $port did not answer (attempt $tries); log:"
        tail -n 5 "$dir/redis.log" >&2 || true
        stop_pid "$dir"
        [ "$tries" -lt 5 ] || { rm -rf "$dir" "$STATE"; exit 1; }
    done
    echo "redis://127.0.0.1:$port/0" >"$dir/url"
    say "redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$port, dir $dir"
    echo "export WALQ_REDIS_URL=redis://127.0.0.1:$port/0"
}

stop_pid() {  # stop_pid DIR: stop the server whose pidfile is in DIR, if it runs
    local pidfile="$1/redis.pid" pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    say "pid $pid ignored SIGTERM for 5 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    [ -f "$STATE" ] || { say "nothing to stop"; return 0; }
    local dir
    dir=$(cat "$STATE")
    case "$dir" in
    "${TMPDIR:-/tmp}"/walq-redis.*) ;;
    *) say "refusing to touch $dir"; exit 1 ;;
    esac
    stop_pid "$dir"
    rm -rf "$dir" "$STATE"
    say "stopped; removed $dir"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
