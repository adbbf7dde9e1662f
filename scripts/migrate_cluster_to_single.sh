#!/usr/bin/env bash
# Take a cluster node back to a single device with nothing lost, timing each step:
#
#   1 backup    `jetsonmind backup`: the node's database, settings, keys and models
#   2 stop      stop its `jetsonmind serve` (--serve-pid, else the pid the migration recorded)
#   3 leave     `jetsonmind cluster leave`: the cluster's settings become the node's own; its key
#               file already holds the cluster's keys, its models stay in its store
#   4 start     `jetsonmind serve` on its own, in the background; wait until it serves
#   5 validate  at this node: the key opens a session, its settings hold, each model answers
#
# usage: scripts/migrate_cluster_to_single.sh [--data-dir DIR] [--config FILE] [--serve-pid PID]
#            [--listen ADDR] [--token-env VAR] [--bin PATH]
set -euo pipefail

data_dir="" config="" serve_pid="" listen="" token_env=""
while [ $# -gt 0 ]; do
    case "$1" in
        --data-dir) data_dir=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --serve-pid) serve_pid=$2; shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --token-env) token_env=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
source "$(dirname "$0")/migrate-common.sh"
resolve_data_dir

step backup backup
step preflight need_python_mcp
step stop stop_serve
step leave jm cluster leave
step start start_node
step validate check_via "$served_url"
summary "back to a single device"
