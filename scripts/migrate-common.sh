# Shared by migrate_single_to_cluster.sh, migrate_cluster_to_single.sh and integrate_cloud_backup.sh:
# the jetsonmind command with the node's flags, timed steps, stopping and starting `jetsonmind serve`,
# restarting a process as it ran, the check through a node's gateway. Sourced, not run; the caller
# sets bin, python, data_dir, config, listen, serve_pid, token_env (and stop_hint: what a failed step
# says besides its name).

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="${bin:-$repo/target/release/jetsonmind}"
python="${PYTHON:-$repo/.venv/bin/python}"

# `jetsonmind` with this node's --data-dir and --config.
jm() {
    local global=()
    [ -n "${data_dir:-}" ] && global+=(--data-dir "$data_dir")
    [ -n "${config:-}" ] && global+=(--config "$config")
    "$bin" "${global[@]}" "$@"
}

# The data dir the configuration names (once --data-dir and --config are known).
resolve_data_dir() {
    [ -x "$bin" ] || { echo "$bin: not built (./setup.sh)" >&2; exit 2; }
    data_dir=$(jm config | sed -n 's/^dir = "\(.*\)"$/\1/p' | head -1)
    [ -n "$data_dir" ] || { echo "cannot tell the data dir from \`jetsonmind config\`" >&2; exit 1; }
}

steps=()
started_all=$(date +%s.%N)

# step NAME COMMAND...: run it, record its time; stop at the first failure.
step() {
    local name=$1 start end
    shift
    echo "==> $name"
    start=$(date +%s.%N)
    if ! "$@"; then
        echo "stopped at step '$name'; ${stop_hint:-the backup is in $data_dir/backups}" >&2
        exit 1
    fi
    end=$(date +%s.%N)
    steps+=("$(awk -v n="$name" -v a="$start" -v b="$end" 'BEGIN { printf "%-9s %7.1f s", n, b - a }')")
}

# summary TITLE: each step's time and the total.
summary() {
    echo
    echo "$1, step by step:"
    printf '  %s\n' "${steps[@]}"
    awk -v a="$started_all" -v b="$(date +%s.%N)" 'BEGIN { printf "  %-9s %7.1f s\n", "total", b - a }'
}

backup() { jm backup; }

# Whether process PID runs (an exited child its parent has not reaped yet does not).
running() {
    kill -0 "$1" 2>/dev/null && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# Whether process PID is a `jetsonmind serve` (a stale pid file may name another process now).
is_serve() {
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "jetsonmind.* serve"
}

# The checks that need the official MCP client: fail before anything is stopped.
need_python_mcp() {
    "$python" -c "import mcp" 2>/dev/null || {
        echo "$python cannot import mcp: run ./setup.sh (or set PYTHON to a python with the mcp package)" >&2
        return 1
    }
}

# Stop the running `jetsonmind serve` (--serve-pid, else the one start_node recorded).
stop_serve() {
    local pid=${serve_pid:-$(cat "$data_dir/serve.pid" 2>/dev/null || true)}
    [ -n "$pid" ] || { echo "(no --serve-pid: stop jetsonmind serve yourself before this)"; return 0; }
    running "$pid" || { echo "(pid $pid is not running)"; return 0; }
    is_serve "$pid" || { echo "pid $pid is not a jetsonmind serve: not stopping it" >&2; return 1; }
    terminate "$pid" "serve (pid $pid)"
}

# terminate PID WHAT: SIGTERM, then wait up to 30 s for PID to end (WHAT names it if it does not).
terminate() {
    kill -TERM "$1"
    local deadline=$((SECONDS + 30))
    while running "$1"; do
        [ $SECONDS -lt $deadline ] || { echo "$2 did not stop" >&2; return 1; }
        sleep 0.1
    done
}

# Start `jetsonmind serve` in the background (log and pid in the data dir); wait until it serves.
start_node() {
    local args=(serve) log="$data_dir/serve.log"
    [ -n "${listen:-}" ] && args+=(--listen "$listen")
    # Emptied here, not by the background job's own redirection: that runs when the job is
    # scheduled, and until then the log still holds the last serve's "listening on" line.
    : >"$log"
    nohup "$bin" ${data_dir:+--data-dir "$data_dir"} ${config:+--config "$config"} "${args[@]}" >>"$log" 2>&1 &
    echo $! >"$data_dir/serve.pid"
    wait_serving "$!" "$log" 0 || return 1
    echo "serving at $served_url (pid $(cat "$data_dir/serve.pid"), log $log)"
}

# wait_serving PID LOG FROM: until the `jetsonmind serve` PID, logging to LOG from byte FROM on,
# serves; its URL in served_url. What LOG held before FROM is another run's.
wait_serving() {
    local deadline=$((SECONDS + 60)) status
    served_url=""
    # (a pipe closed early by head fails the pipeline under pipefail: what it printed still counts)
    until served_url=$(tail -c +$(($3 + 1)) "$2" | sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' | head -1 || true)
        [ -n "$served_url" ]; do
        if ! running "$1"; then
            wait "$1" 2>/dev/null && status=0 || status=$?
            echo "jetsonmind serve (pid $1) exited with status $status before it served; its log $2:" >&2
            tail -c +$(($3 + 1)) "$2" >&2
            return 1
        fi
        [ $SECONDS -lt $deadline ] || { echo "serve did not start within 60 s: $2" >&2; return 1; }
        sleep 0.2
    done
}

# restart_as_it_ran PID LOG: stop process PID (SIGTERM, waited for) and start it again with the same
# command line, directory and environment, in the background, its output appended to LOG; the new
# pid in restarted_pid, the byte of LOG where its output begins in restarted_from. For a process
# started by hand or by a harness, which no service manager restarts; read before it stops, so a pid
# that is gone changes nothing.
restart_as_it_ran() {
    local pid=$1 log=$2 cwd argv=() environment=()
    running "$pid" || { echo "pid $pid is not running: cannot tell how it ran" >&2; return 1; }
    mapfile -d '' argv <"/proc/$pid/cmdline" && mapfile -d '' environment <"/proc/$pid/environ" \
        && cwd=$(readlink "/proc/$pid/cwd") || { echo "cannot read how pid $pid ran (/proc/$pid)" >&2; return 1; }
    terminate "$pid" "pid $pid (${argv[0]})" || return 1
    restarted_from=$(stat -c %s "$log" 2>/dev/null || echo 0)
    (cd "$cwd" && exec nohup env -i "${environment[@]}" "${argv[@]}") >>"$log" 2>&1 </dev/null &
    restarted_pid=$!
    echo "restarted ${argv[0]##*/} as it ran: pid $restarted_pid (log $log)"
}

# check_via URL: this node's key, settings and models work through the gateway at URL.
check_via() {
    local args=(--via "$1" --settings "$data_dir/settings.toml" --models "$data_dir/.models.json")
    [ -n "${token_env:-}" ] && args+=(--token-env "$token_env")
    jm models list --json >"$data_dir/.models.json"
    "$python" "$repo/scripts/check_through_node.py" "${args[@]}"
}
