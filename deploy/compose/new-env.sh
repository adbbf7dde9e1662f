#!/usr/bin/env bash
# Writes deploy/compose/.env (readable by its owner only): two API keys made
# from the kernel's randomness, the gateway's for its backends and one for
# clients. Refuses to overwrite an existing .env: keys already in a data
# volume would no longer match.
set -euo pipefail
env_file=${1:-"$(dirname "$0")/.env"}
[ -e "$env_file" ] && { echo "$env_file exists; remove it (and the data volume) first" >&2; exit 1; }
key() { printf 'jm_%s_%s' "$1" "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"; }
umask 077
cat > "$env_file" <<ENV
JETSONMIND_BACKEND_KEY=$(key gateway)
JETSONMIND_CLIENT_KEY=$(key client)
ENV
echo "wrote $env_file: clients send Authorization: Bearer \$JETSONMIND_CLIENT_KEY" >&2
