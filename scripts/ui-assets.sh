#!/usr/bin/env bash
# The dashboard's front-end packages, from npm, pinned with their sha512 in
# crates/web/assets/package-lock.json (npm ci refuses a tarball that differs).
# The files the binary embeds are copies in crates/web/assets/vendor, so that
# building needs no npm; this checks them against the packages (default) or,
# with --update, copies them there (after changing package.json).
set -euo pipefail
cd "$(dirname "$0")/../crates/web/assets"
npm ci --no-audit --no-fund --loglevel=error --ignore-scripts
files=(uplot/dist/uPlot.iife.min.js uplot/dist/uPlot.min.css uplot/LICENSE)
for file in "${files[@]}"; do
    if [ "${1:-}" = "--update" ]; then
        cp "node_modules/$file" vendor/
    elif ! cmp -s "node_modules/$file" "vendor/$(basename "$file")"; then
        echo "crates/web/assets/vendor/$(basename "$file") differs from npm's $file: run $0 --update" >&2
        exit 1
    fi
done
echo "dashboard assets: ${files[*]} match the pinned packages"
