#!/usr/bin/env bash
# Connect an existing JetsonMind cluster (a site) to a cloud hub: its NATS servers become leaf nodes
# of the hub, its nodes route overflow to the cloud's nodes and keep a backup of the site at the hub.
# Each step is timed (the whole is meant to take under 30 minutes):
#
#   1 preflight  nothing changed yet: the hub answers (monitoring), is JetStream domain --hub-domain
#                and takes leaf connections at --leaf-url; the cloud cluster has nodes there; each
#                site nats-server answers, is 2.2 or newer (JetStream domains), has a jetstream block
#                in its config and no leafnodes block of its own; no site server's name is taken at
#                the hub, no stream the backup makes there belongs to another site; every node
#                answers and would take the [hybrid] settings (an admin key: --token-env)
#   2 config     each site nats-server config gets the leaf link (a copy of the old one beside it):
#                  jetstream { domain: <domain> }   (kept when it is there)
#                  leafnodes { remotes: [ { urls: [<leaf-url>], deny_exports: ["jm.<cluster>.>"] } ] }
#                deny_exports keeps the site's own traffic (its inbox replies too) off the uplink
#   3 nats       each site nats-server, one at a time: reloaded (SIGHUP) when only the leaf link is
#                new, restarted when the JetStream domain is (a domain does not reload); waited for
#   4 link       the hub's /leafz lists every site server
#   5 settings   [hybrid] hub_domain, cloud_cluster, backup = true and --egress (the default egress
#                rule, e.g. '{"latency_target_ms": 500}'), through a node (update_settings: the
#                cluster's settings, so every node has them)
#   6 nodes      each node, one at a time: restarted (hub_domain is read at join), waited for until
#                its routing has a replica of the cloud
#   7 backups    the hub mirrors KV_<c>_settings, _keys, _models, _placements, _spending, <c>_telemetry and
#                <c>_analytics from the site's domain, caught up
#   8 failover   --failover-calls text_generate calls at once through the first node: more than the
#                site takes under its ceiling, so some must run in the cloud (each call's route says
#                where it ran; they are real calls, charged to the cloud as any other)
#
# A failure after the first change undoes what was done (configs put back, servers reloaded or
# restarted, the [hybrid] settings put back, restarted nodes restarted again) and says so.
#
# How things restart: a nats-server whose config has `pid_file`, and a node given with its pid
# (--node URL,PID), are restarted here as they ran (same command line, directory, environment);
# otherwise --nats-restart / --node-restart is run (through bash, with NATS_CONFIG or NODE_URL set),
# e.g. 'sudo systemctl restart nats-server' or 'ssh jetson3 sudo systemctl restart jetsonmind'.
#
# usage: scripts/integrate_cloud_backup.sh --hub-monitor URL --leaf-url nats-leaf://HUB:7422
#            --cluster NAME --nats-config FILE [--nats-config FILE...] --node URL[,PID] [--node ...]
#            [--domain NAME] [--hub-domain hub] [--cloud-cluster cloud] [--egress JSON] [--token-env VAR]
#            [--nats-restart CMD] [--node-restart CMD] [--failover-calls N] [--model NAME]
#            [--wait-s SECS] [--work-dir DIR] [--bin PATH]
set -euo pipefail

hub_monitor="" leaf_url="" cluster="" domain="" hub_domain="hub" cloud_cluster="cloud" token_env=""
egress="" nats_restart="" node_restart="" failover_calls=16 model="" wait_s=300 work_dir=""
nats_configs=() node_specs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --hub-monitor) hub_monitor=${2%/}; shift 2 ;;
        --leaf-url) leaf_url=$2; shift 2 ;;
        --cluster) cluster=$2; shift 2 ;;
        --domain) domain=$2; shift 2 ;;
        --hub-domain) hub_domain=$2; shift 2 ;;
        --cloud-cluster) cloud_cluster=$2; shift 2 ;;
        --egress) egress=$2; shift 2 ;;
        --nats-config) nats_configs+=("$2"); shift 2 ;;
        --nats-restart) nats_restart=$2; shift 2 ;;
        --node) node_specs+=("$2"); shift 2 ;;
        --node-restart) node_restart=$2; shift 2 ;;
        --token-env) token_env=$2; shift 2 ;;
        --failover-calls) failover_calls=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --wait-s) wait_s=$2; shift 2 ;;
        --work-dir) work_dir=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
need() { [ -n "$2" ] || { echo "$1 is required (see --help)" >&2; exit 2; }; }
need --hub-monitor "$hub_monitor"
need --leaf-url "$leaf_url"
need --cluster "$cluster"
need --nats-config "${nats_configs[*]}"
need --node "${node_specs[*]}"
domain=${domain:-$cluster}
for name in "$cluster" "$domain" "$hub_domain" "$cloud_cluster"; do
    [[ $name =~ ^[A-Za-z0-9_-]+$ ]] || { echo "\`$name\`: use letters, digits, - and _ only" >&2; exit 2; }
done
[ "$domain" != "$hub_domain" ] || { echo "the site's domain must differ from the hub's ($hub_domain)" >&2; exit 2; }
[[ $failover_calls =~ ^[0-9]+$ ]] || { echo "--failover-calls takes a number" >&2; exit 2; }
source "$(dirname "$0")/migrate-common.sh"
work_dir=${work_dir:-$PWD/cloud-integration-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$work_dir"
stop_hint="what was done is undone below; logs and copies in $work_dir"

# The nodes: their URLs and, when given, pids (restarted here); the URL of a node restarted here may
# change (a port it picked): node_urls follows it.
node_urls=() node_pids=()
for spec in "${node_specs[@]}"; do
    node_urls+=("${spec%%,*}")
    [[ $spec == *,* ]] && node_pids+=("${spec#*,}") || node_pids+=("")
done

# -- reading state ------------------------------------------------------------------------------------

# json URL EXPR: EXPR (Python, over `d`, the JSON document at URL; dig(d, "a.b", default) reads a
# dotted path) printed; fails when nothing answers.
json() {
    local document
    document=$(curl -fsS --max-time 5 "$1") || return 1
    "$python" -c "import json, sys
def dig(d, path, default):
    for part in path.split('.'):
        d = d.get(part) if isinstance(d, dict) else None
    return default if d is None else d
d = json.load(sys.stdin)
print($2)" <<<"$document"
}

# wait_for WHAT COMMAND...: until COMMAND succeeds, at most --wait-s.
wait_for() {
    local what=$1 deadline=$((SECONDS + wait_s))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "$what: not so after $wait_s s" >&2; return 1; }
        sleep 0.5
    done
    echo "$what"
}

# The monitoring URL a nats-server config names (`http: host:port`, `http_port: N`).
monitor_of() {
    local address
    address=$(sed -nE 's/^[[:space:]]*http[[:space:]]*[:=][[:space:]]*"?([^"[:space:]]+)"?.*/\1/p' "$1" | head -1)
    [ -n "$address" ] || address=$(sed -nE 's/^[[:space:]]*http_port[[:space:]]*[:=][[:space:]]*([0-9]+).*/127.0.0.1:\1/p' "$1" | head -1)
    [ -n "$address" ] || return 1
    [[ $address == *:* ]] || address="127.0.0.1:$address"
    echo "http://${address/0.0.0.0/127.0.0.1}"
}

# The value of `key` inside the config's jetstream block (empty when none).
jetstream_key() {
    awk -v key="$2" '
        /^[[:space:]]*jetstream[[:space:]]*[:=]?[[:space:]]*\{/ { inside = 1; depth = 0 }
        inside {
            line = $0; depth += gsub(/\{/, "{", line) - gsub(/\}/, "}", line)
            if ($0 ~ "^[[:space:]]*" key "[[:space:]]*[:=]") {
                sub("^[[:space:]]*" key "[[:space:]]*[:=][[:space:]]*", ""); gsub(/["[:space:]]/, ""); print; exit
            }
            if (depth <= 0) inside = 0
        }' "$1"
}

pid_file_of() {
    sed -nE 's/^[[:space:]]*pid_file[[:space:]]*[:=][[:space:]]*"?([^"[:space:]]+)"?.*/\1/p' "$1" | head -1
}

BEGIN_MARK="# -- leaf link to the cloud hub (scripts/integrate_cloud_backup.sh) --"
END_MARK="# -- end of the leaf link --"

has_our_leaf() { grep -qF "$BEGIN_MARK" "$1"; }

mirror_names() {
    local c=$cluster
    echo "KV_${c}_settings KV_${c}_keys KV_${c}_models KV_${c}_placements KV_${c}_spending ${c}_telemetry ${c}_analytics"
}

# The hub's streams: "name api-prefix-of-its-mirror lag messages" per line.
hub_streams() {
    json "$hub_monitor/jsz?accounts=true&streams=true&config=true" '"\n".join(
        " ".join(str(x) for x in (s["name"], dig(s, "config.mirror.external.api", "-"), dig(s, "mirror.lag", "-"),
                                  s["state"]["messages"]))
        for a in d.get("account_details") or [] for s in a.get("stream_detail") or [])'
}

# -- 1 preflight --------------------------------------------------------------------------------------

preflight() {
    need_python_mcp || return 1
    check_hub && check_leaf_url && check_cloud_nodes || return 1
    local config
    for config in "${nats_configs[@]}"; do check_site_server "$config" || return 1; done
    check_names_at_hub && check_nodes
}

check_hub() {
    local said
    said=$(json "$hub_monitor/varz" 'str(dig(d, "jetstream.config.domain", "")) + "|" + str(dig(d, "leaf.port", 0))') \
        || { echo "the hub's monitoring does not answer at $hub_monitor" >&2; return 1; }
    IFS='|' read -r hub_js_domain hub_leaf_port <<<"$said"
    [ "$hub_js_domain" = "$hub_domain" ] \
        || { echo "the hub's JetStream domain is '$hub_js_domain', not '$hub_domain'" >&2; return 1; }
    [ "${hub_leaf_port:-0}" -gt 0 ] || { echo "the hub takes no leaf connections (no leafnodes listen)" >&2; return 1; }
    echo "hub answers: domain $hub_domain, leaf port $hub_leaf_port"
}

check_leaf_url() {
    local address=${leaf_url#*://}
    address=${address##*@}
    local host=${address%:*} port=${address##*:}
    timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null \
        || { echo "nothing takes connections at $leaf_url" >&2; return 1; }
    echo "$leaf_url takes connections"
}

check_cloud_nodes() {
    local members
    members=$(hub_streams | awk -v s="KV_${cloud_cluster}_members" '$1 == s { print $4 }')
    [ "${members:-0}" -gt 0 ] || {
        echo "the cloud cluster '$cloud_cluster' has no nodes at the hub: start one there first" \
            "(JETSONMIND_CLUSTER__NAME=$cloud_cluster jetsonmind serve --cluster <hub's NATS> --node c1)" >&2
        return 1
    }
    echo "cloud cluster $cloud_cluster has nodes at the hub"
}

check_site_server() {
    local config=$1 monitor said version name have
    [ -f "$config" ] && [ -w "$config" ] || { echo "$config: not a file this script can write" >&2; return 1; }
    monitor=$(monitor_of "$config") || { echo "$config names no monitoring port (http: host:port): add one" >&2; return 1; }
    said=$(json "$monitor/varz" 'd["version"] + "|" + d["server_name"]') \
        || { echo "the site nats-server of $config does not answer at $monitor" >&2; return 1; }
    IFS='|' read -r version name <<<"$said"
    printf '%s\n2.2.0\n' "$version" | sort -V -C -r \
        || { echo "$name runs nats-server $version: JetStream domains need 2.2.0 or newer" >&2; return 1; }
    grep -qE '^[[:space:]]*jetstream[[:space:]]*[:=]?[[:space:]]*\{' "$config" \
        || { echo "$config has no jetstream { ... } block: give it one (store_dir...) first" >&2; return 1; }
    if grep -qE '^[[:space:]]*(leafnodes|leaf)[[:space:]]*[:=]?[[:space:]]*\{' "$config" && ! has_our_leaf "$config"; then
        echo "$config has a leafnodes block already: add the remote to it by hand" \
            "($leaf_url, deny_exports jm.$cluster.>)" >&2
        return 1
    fi
    have=$(jetstream_key "$config" domain)
    [ -z "$have" ] || [ "$have" = "$domain" ] \
        || { echo "$config: its JetStream domain is '$have', not '$domain' (--domain)" >&2; return 1; }
    [ -n "$(pid_file_of "$config")" ] || [ -n "$nats_restart" ] \
        || { echo "$config has no pid_file: give --nats-restart CMD to restart it" >&2; return 1; }
    site_names+=("$name")
    echo "site server $name: nats-server $version, domain ${have:-(none yet: added, then restarted)}"
}

check_names_at_hub() {
    local leafs taken name
    leafs=$(json "$hub_monitor/leafz" '" ".join(l.get("name", "") for l in d.get("leafs") or [])') || return 1
    for name in "${site_names[@]}"; do
        [[ " $leafs " == *" $name "* ]] \
            && { echo "a leaf named $name is linked to the hub already: server names must be unique" >&2; return 1; }
    done
    # The backup's streams at the hub, if there, must be this site's mirrors (a run before this one).
    taken=$(hub_streams | awk -v names=" $(mirror_names) " -v ours="\$JS.$domain.API" \
        'index(names, " " $1 " ") && $2 != ours { print $1 " (mirrors " $2 ")" }')
    [ -z "$taken" ] || {
        echo "the hub has streams of these names that are not this site's: $taken; another site uses the" \
            "cluster name '$cluster'" >&2
        return 1
    }
    echo "names free at the hub: ${site_names[*]}, $(mirror_names)"
}

# Every node answers and would take the [hybrid] settings (a dry run).
check_nodes() {
    local url
    for url in "${node_urls[@]}"; do
        through "$url" --update "$(hybrid_patch)" --dry-run || return 1
    done
    [ -n "$node_restart" ] || ! printf '%s\n' "${node_pids[@]}" | grep -qx '' \
        || { echo "a --node without a pid needs --node-restart CMD" >&2; return 1; }
}

hybrid_patch() {
    printf '{"hybrid": {"hub_domain": "%s", "cloud_cluster": "%s", "backup": true%s}}' "$hub_domain" "$cloud_cluster" \
        "${egress:+, \"egress\": $egress}"
}

# through URL ARGS...: check_through_node.py at the node's gateway URL.
through() {
    local url=$1
    shift
    "$python" "$repo/scripts/check_through_node.py" --via "$url" ${token_env:+--token-env "$token_env"} \
        --wait-s "$wait_s" "$@"
}

# -- 2 config -----------------------------------------------------------------------------------------

write_configs() {
    local config
    for config in "${nats_configs[@]}"; do
        cp -p "$config" "$work_dir/$(basename "$config").before" || return 1
        changed_configs+=("$config")
        leaf_config "$config" || return 1
        echo "$config: leaf link to $leaf_url (the old one: $work_dir/$(basename "$config").before)"
    done
}

leaf_config() {
    local config=$1 next="$1.next"
    # A run before this one left its block: written again, not twice.
    awk -v begin="$BEGIN_MARK" -v end="$END_MARK" '$0 == begin { skip = 1 } !skip { print } $0 == end { skip = 0 }' \
        "$config" >"$next" || return 1
    if [ -z "$(jetstream_key "$config" domain)" ]; then
        sed -i -E "0,/^[[:space:]]*jetstream[[:space:]]*[:=]?[[:space:]]*\{/s//&\n  domain: \"$domain\"/" "$next" || return 1
        domain_added+=("$config")
    fi
    cat >>"$next" <<EOF || return 1
$BEGIN_MARK
leafnodes {
  remotes: [ { urls: ["$leaf_url"], deny_exports: ["jm.$cluster.>"] } ]
}
$END_MARK
EOF
    mv "$next" "$config"
}

# -- 3 nats -------------------------------------------------------------------------------------------

apply_configs() {
    local config
    for config in "${nats_configs[@]}"; do
        apply_config "$config" || return 1
    done
}

# Reload or restart the site nats-server of CONFIG after its config changed; wait until it is healthy.
apply_config() {
    local config=$1 pid_file pid monitor
    pid_file=$(pid_file_of "$config")
    monitor=$(monitor_of "$config")
    pid=$([ -n "$pid_file" ] && cat "$pid_file" 2>/dev/null || true)
    if [[ " ${domain_added[*]} " != *" $config "* ]] && [ -n "$pid" ]; then
        echo "reloading $config (pid $pid): only its leaf link changed"
        reload "$pid" "$monitor" || return 1
    elif [ -n "$pid" ]; then
        echo "restarting $config (pid $pid): a JetStream domain needs a restart"
        restart_as_it_ran "$pid" "$work_dir/$(basename "$config").log" || return 1
        started+=("$restarted_pid")
    else
        echo "restarting $config: $nats_restart"
        NATS_CONFIG=$config bash -c "$nats_restart" || return 1
    fi
    wait_for "$config: JetStream healthy" curl -fsS --max-time 5 "$monitor/healthz"
}

# reload PID MONITOR: SIGHUP; the server says when it loaded its config (a reload it refused, e.g. a
# config error, leaves that time as it was and says why in its log).
reload() {
    local loaded
    loaded=$(json "$2/varz" 'd.get("config_load_time")') || return 1
    kill -HUP "$1" || return 1
    wait_for "config reloaded" loaded_since "$2" "$loaded" \
        || { echo "the nats-server (pid $1) did not take its new config: see its log" >&2; return 1; }
}

# loaded_since MONITOR TIME: the server loaded its config at another time than TIME.
loaded_since() {
    local now
    now=$(json "$1/varz" 'd.get("config_load_time")') && [ "$now" != "$2" ]
}

# -- 4 link -------------------------------------------------------------------------------------------

linked() {
    local leafs name
    leafs=$(json "$hub_monitor/leafz" '" ".join(l.get("name", "") for l in d.get("leafs") or [])') || return 1
    for name in "${site_names[@]}"; do
        [[ " $leafs " == *" $name "* ]] || return 1
    done
}

wait_link() {
    wait_for "the hub lists ${site_names[*]} as leaf nodes" linked \
        || { echo "is $leaf_url the hub's leaf port (its monitoring says port $hub_leaf_port)? see the site servers' logs" >&2; return 1; }
}

# -- 5 settings, 6 nodes --------------------------------------------------------------------------------

configure_settings() {
    through "${node_urls[0]}" --update "$(hybrid_patch)" --undo-file "$work_dir/hybrid.undo.json" || return 1
    settings_changed=1
}

restart_nodes() {
    local i
    for i in "${!node_urls[@]}"; do
        # The node restarts with what it applied of the cluster's settings: wait until it has them.
        through "${node_urls[$i]}" --wait-setting "hybrid.hub_domain=$hub_domain" || return 1
        restart_node "$i" || return 1
        restarted_nodes+=("$i")
        through "${node_urls[$i]}" --cloud "$cloud_cluster" || return 1
        echo "node at ${node_urls[$i]} routes to the cloud"
    done
}

# Restart node i (as it ran when its pid is known, else --node-restart); wait until it serves.
restart_node() {
    local i=$1 log
    if [ -n "${node_pids[$i]}" ]; then
        log="$work_dir/node$i.log"
        is_serve "${node_pids[$i]}" || { echo "pid ${node_pids[$i]} is not a jetsonmind serve: not restarting it" >&2; return 1; }
        restart_as_it_ran "${node_pids[$i]}" "$log" || return 1
        node_pids[$i]=$restarted_pid
        started+=("$restarted_pid")
        wait_serving "$restarted_pid" "$log" "$restarted_from" || return 1
        node_urls[$i]=$served_url
        echo "node $i serves at $served_url"
    else
        echo "restarting the node at ${node_urls[$i]}: $node_restart"
        NODE_URL=${node_urls[$i]} bash -c "$node_restart"
    fi
}

# -- 7 backups ----------------------------------------------------------------------------------------

mirrored() {
    local streams name
    streams=$(hub_streams) || return 1
    for name in $(mirror_names); do
        awk -v n="$name" -v api="\$JS.$domain.API" '$1 == n && $2 == api && $3 == "0" { found = 1 } END { exit !found }' \
            <<<"$streams" || return 1
    done
}

wait_backups() {
    wait_for "the hub mirrors $(mirror_names) from $domain, caught up" mirrored || return 1
    hub_streams | awk -v names=" $(mirror_names) " 'index(names, " " $1 " ") { printf "  %s: %s messages at the hub\n", $1, $4 }'
}

# -- 8 failover ---------------------------------------------------------------------------------------

failover() {
    [ "$failover_calls" -gt 0 ] || { echo "(--failover-calls 0: not tested)"; return 0; }
    through "${node_urls[0]}" --failover "$failover_calls" ${model:+--model "$model"}
}

# -- undoing ------------------------------------------------------------------------------------------

changed_configs=() domain_added=() restarted_nodes=() started=() site_names=()
settings_changed="" nats_applying=""

old_hub_domain() {
    "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["hybrid"]["hub_domain"] or "")' \
        "$work_dir/hybrid.undo.json"
}

# Those of the processes this script started that still run.
still_running() {
    local pid
    for pid in "${started[@]}"; do running "$pid" && printf '%s ' "$pid"; done
}

undo() {
    local status=$? config i
    [ $status -ne 0 ] || return 0
    [ ${#changed_configs[@]} -gt 0 ] || { echo "nothing was changed" >&2; return 0; }
    echo "undoing:" >&2
    if [ -n "$settings_changed" ]; then
        through "${node_urls[0]}" --update "$(cat "$work_dir/hybrid.undo.json")" >&2 \
            && echo "  [hybrid] settings put back as they were: $(cat "$work_dir/hybrid.undo.json")" >&2 \
            || echo "  [hybrid] settings NOT put back: set them with update_settings to $(cat "$work_dir/hybrid.undo.json")" >&2
    fi
    for config in "${changed_configs[@]}"; do
        cp -p "$work_dir/$(basename "$config").before" "$config" && echo "  $config put back as it was" >&2
        if [ -n "$nats_applying" ]; then
            apply_config "$config" >&2 && echo "  its nats-server runs the old config again" >&2 \
                || echo "  its nats-server did NOT come back with the old config: restart it" >&2
        fi
    done
    for i in "${restarted_nodes[@]}"; do
        through "${node_urls[$i]}" --wait-setting "hybrid.hub_domain=$(old_hub_domain)" >&2 \
            && restart_node "$i" >&2 && echo "  node $i restarted again, without the hub" >&2 \
            || echo "  node $i NOT restarted: restart it to leave the hub" >&2
    done
    [ -z "$(still_running)" ] || echo "  processes started here: $(still_running)" >&2
}
trap undo EXIT

echo "connecting cluster $cluster (domain $domain) to the hub at $leaf_url; work dir $work_dir"
step preflight preflight
step config write_configs
nats_applying=1
step nats apply_configs
step link wait_link
step settings configure_settings
step nodes restart_nodes
step backups wait_backups
step failover failover
summary "connected to the cloud hub"
echo "processes started here: $(still_running)"
