#!/usr/bin/env bash
# Loopback Redis deployments for the Redis tests, durable as walq's guarantees need
# (appendonly yes, appendfsync always, no RDB snapshots), in temporary directories.
#
#   eval "$(bash .ci/redis.sh start [single])"  # one server; installs redis-server if
#                                               # missing; prints
#                                               # `export WALQ_REDIS_URL=redis://127.0.0.1:PORT/0`
#   eval "$(bash .ci/redis.sh start cluster)"   # 3 primaries (redis-cli --cluster create):
#                                               # WALQ_REDIS_CLUSTER_URL=redis+cluster://...
#   eval "$(bash .ci/redis.sh start sentinel)"  # a primary, a replica and 3 sentinels
#                                               # (service "walq"): WALQ_REDIS_SENTINEL_URL
#   bash .ci/redis.sh stop [single|cluster|sentinel]  # stops those servers, removes the dir
#
# Only the `export` line goes to stdout; progress goes to stderr. A deployment's
# directory is remembered in $WALQ_REDIS_STATE (default /tmp/walq-ci-redis.state;
# STATE.cluster and STATE.sentinel for the others), so `stop` finds it from another
# shell. Every server is started from a config file in that directory (a test may
# kill one and start it again from its INFO config_file), and only the servers this
# script started are ever signalled (by the pids in their own pidfiles).
set -euo pipefail

MODE=${2:-single}
STATE=${WALQ_REDIS_STATE:-${TMPDIR:-/tmp}/walq-ci-redis.state}
case "$MODE" in
single) VAR=WALQ_REDIS_URL ;;
cluster) VAR=WALQ_REDIS_CLUSTER_URL; STATE=$STATE.cluster ;;
sentinel) VAR=WALQ_REDIS_SENTINEL_URL; STATE=$STATE.sentinel ;;
*) echo "usage: $0 start|stop [single|cluster|sentinel]" >&2; exit 2 ;;
esac

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

running() {  # running DIR: succeeds if every server of DIR's pidfiles runs
    local pidfile any=1
    for pidfile in "$1"/*.pid; do
        [ -f "$pidfile" ] || return 1
        kill -0 "$(cat "$pidfile")" 2>/dev/null || return 1
        any=0
    done
    return $any
}

conf() {  # conf DIR NAME PORT [LINE...]: write DIR/NAME.conf for a durable server on PORT
    local dir=$1 name=$2 port=$3
    shift 3
    mkdir -p "$dir/$name"
    {
        echo "bind 127.0.0.1"
        echo "port $port"
        echo "protected-mode yes"
        echo "dir $dir/$name"
        echo "daemonize yes"
        echo "pidfile $dir/$name.pid"
        echo "logfile $dir/$name.log"
        echo "appendonly yes"
        echo "appendfsync always"
        echo "save \"\""
        echo "maxmemory-policy noeviction"
        printf '%s\n' "$@"
    } >"$dir/$name.conf"
}

launch() {  # launch DIR NAME PORT [--sentinel]: start it; fails if it does not answer
    redis-server "$1/$2.conf" ${4:-} >&2 || true
    for _ in $(seq 1 100); do
        ping "$3" && return 0
        sleep 0.05
    done
    say "server $2 on port $3 did not answer; log:"
    tail -n 5 "$1/$2.log" >&2 || true
    return 1
}

start_single() {  # start_single DIR: prints the URL
    local port
    port=$(free_port)
    conf "$1" server "$port"
    launch "$1" server "$port" || return 1
    echo "redis://127.0.0.1:$port/0"
}

start_cluster() {  # start_cluster DIR: 3 primaries, no replicas; prints the URL
    local ports=() port bus i hosts=()
    for i in 1 2 3; do
        port=$(free_port)
        bus=$(free_port)
        conf "$1" "node$i" "$port" "cluster-enabled yes" "cluster-port $bus" \
            "cluster-config-file $1/node$i/nodes.conf" "cluster-node-timeout 2000"
        launch "$1" "node$i" "$port" || return 1
        ports+=("$port")
        hosts+=("127.0.0.1:$port")
    done
    redis-cli --cluster create "${hosts[@]}" --cluster-replicas 0 --cluster-yes >&2 || return 1
    for _ in $(seq 1 200); do
        local ok=0
        for port in "${ports[@]}"; do
            redis-cli -p "$port" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=1
        done
        [ $ok = 0 ] && break
        sleep 0.05
    done
    echo "redis+cluster://$(IFS=,; echo "${hosts[*]}")/"
}

start_sentinel() {  # start_sentinel DIR: primary, replica, 3 sentinels; prints the URL
    local primary replica port i hosts=()
    primary=$(free_port)
    replica=$(free_port)
    conf "$1" primary "$primary"
    launch "$1" primary "$primary" || return 1
    conf "$1" replica "$replica" "replicaof 127.0.0.1 $primary"
    launch "$1" replica "$replica" || return 1
    for i in 1 2 3; do
        port=$(free_port)
        mkdir -p "$1/sentinel$i"
        {
            echo "bind 127.0.0.1"
            echo "port $port"
            echo "dir $1/sentinel$i"
            echo "daemonize yes"
            echo "pidfile $1/sentinel$i.pid"
            echo "logfile $1/sentinel$i.log"
            echo "sentinel monitor walq 127.0.0.1 $primary 2"
            echo "sentinel down-after-milliseconds walq 3000"
            echo "sentinel failover-timeout walq 5000"
            echo "sentinel parallel-syncs walq 1"
        } >"$1/sentinel$i.conf"
        launch "$1" "sentinel$i" "$port" --sentinel || return 1
        hosts+=("127.0.0.1:$port")
    done
    for _ in $(seq 1 200); do  # the replica has caught up: the first WAIT can succeed
        redis-cli -p "$replica" info replication 2>/dev/null \
            | grep -q 'master_link_status:up' && break
        sleep 0.05
    done
    echo "redis+sentinel://$(IFS=,; echo "${hosts[*]}")/walq"
}

start() {
    if [ -f "$STATE" ] && [ -d "$(cat "$STATE")" ] && running "$(cat "$STATE")"; then
        say "$MODE already running from $(cat "$STATE")"
        echo "export $VAR=$(cat "$(cat "$STATE")/url")"
        return 0
    fi
    install_server
    local dir url tries=0
    while :; do
        tries=$((tries + 1))
        dir=$(mktemp -d "${TMPDIR:-/tmp}/walq-redis.XXXXXX")
        echo "$dir" >"$STATE"
        if url=$("start_$MODE" "$dir"); then
            break
        fi
        say "$MODE did not start (attempt $tries)"
        stop_all "$dir"
        rm -rf "$dir"
        [ "$tries" -lt 5 ] || { rm -f "$STATE"; exit 1; }
    done
    echo "$url" >"$dir/url"
    say "$MODE: redis-server $(redis-server --version | awk '{print $3}') at $url, dir $dir"
    echo "export $VAR=$url"
}

stop_pid() {  # stop_pid PIDFILE: stop the server of that pidfile, if it runs
    local pidfile="$1" pid
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

stop_all() {  # stop_all DIR: stop every server whose pidfile is in DIR
    local pidfile
    for pidfile in "$1"/*.pid; do
        [ -f "$pidfile" ] && stop_pid "$pidfile"
    done
    return 0
}

stop() {
    [ -f "$STATE" ] || { say "nothing to stop"; return 0; }
    local dir
    dir=$(cat "$STATE")
    case "$dir" in
    "${TMPDIR:-/tmp}"/walq-redis.*) ;;
    *) say "refusing to touch $dir"; exit 1 ;;
    esac
    stop_all "$dir"
    rm -rf "$dir" "$STATE"
    say "stopped; removed $dir"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop [single|cluster|sentinel]" >&2; exit 2 ;;
esac
