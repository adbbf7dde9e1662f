#!/usr/bin/env bash
# Move a single JetsonMind device into an edge cluster with nothing lost, timing each step:
#
#   1 backup    `jetsonmind backup`: the database, settings, keys and models, in one archive
#   2 nats      start a nats-server here (--start-nats) or join the given ones; wait until they answer
#     preflight check all that could refuse (the cluster's buckets, model names, the MCP client)
#   3 stop      stop the single device's `jetsonmind serve` (--serve-pid), so its state holds still
#   4 publish   `jetsonmind cluster join --publish-models`: its settings, keys and models into the
#               cluster, and the cluster recorded in its own settings
#   5 start     `jetsonmind serve`, now a cluster node, in the background; wait until it serves
#   6 validate  through another node (--via): the key opens a session there, every setting of this
#               device holds there, each of its models answers a real text_generate there
#
# A failure after the stop and before anything is shared serves the single device again; after,
# it says how to go back.
#
# The way back is scripts/migrate_cluster_to_single.sh; `jetsonmind restore ARCHIVE` undoes all.
#
# usage: scripts/migrate_single_to_cluster.sh --cluster nats://a:4222[,nats://b:4222] --via URL
#            [--node NAME] [--data-dir DIR] [--config FILE] [--serve-pid PID] [--listen ADDR]
#            [--start-nats] [--token-env VAR] [--bin PATH]
set -euo pipefail

cluster="" via="" node="" data_dir="" config="" serve_pid="" listen="" start_nats="" token_env=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cluster) cluster=$2; shift 2 ;;
        --via) via=$2; shift 2 ;;
        --node) node=$2; shift 2 ;;
        --data-dir) data_dir=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --serve-pid) serve_pid=$2; shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --start-nats) start_nats=1; shift ;;
        --token-env) token_env=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$via" ] || { echo "--via URL (another node's gateway, http://HOST:PORT/mcp) is required" >&2; exit 2; }
[ -n "$cluster" ] || [ -n "$start_nats" ] || { echo "--cluster URLS or --start-nats is required" >&2; exit 2; }
source "$(dirname "$0")/migrate-common.sh"
resolve_data_dir

nats() {
    if [ -n "$start_nats" ]; then
        local nats_server
        nats_server=$(command -v nats-server || echo "$repo/.venv/bin/nats-server")
        mkdir -p "$data_dir/nats"
        nohup "$nats_server" -a 127.0.0.1 -p 4222 -js -sd "$data_dir/nats" >"$data_dir/nats/nats.log" 2>&1 &
        echo $! >"$data_dir/nats/nats.pid"
        cluster=${cluster:-nats://127.0.0.1:4222}
    fi
    local deadline=$((SECONDS + 60))
    until jm cluster status --cluster "$cluster" --json >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "NATS at $cluster does not answer" >&2; return 1; }
        sleep 0.5
    done
    echo "NATS answers at $cluster"
}

join_args() {
    echo cluster join --cluster "$cluster" --publish-models ${node:+--node "$node"}
}

# Everything that could refuse, checked while the single device still serves.
preflight() {
    need_python_mcp && jm $(join_args) --check
}

publish() {
    jm $(join_args) && published=1
}

# A failure after the single device stopped: serve it again as it was, if nothing was shared yet;
# otherwise say how to go back.
recover() {
    [ $? -ne 0 ] && [ -n "${stopped:-}" ] || return 0
    if [ -z "${published:-}" ]; then
        echo "serving the single device again, as it was:" >&2
        start_node >&2 || true
    else
        echo "to go back: scripts/migrate_cluster_to_single.sh ${data_dir:+--data-dir $data_dir}," >&2
        echo "or stop serve and run: jetsonmind --data-dir $data_dir restore --force $data_dir/backups/<the archive above>" >&2
    fi
}
trap recover EXIT

step backup backup
step nats nats
step preflight preflight
step stop stop_serve
stopped=1
step publish publish
step start start_node
step validate check_via "$via"
summary "migrated into the cluster"
