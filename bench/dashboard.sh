#!/usr/bin/env bash
# The dashboard at 1,000 devices: two release pifleet-brokers side by side on loopback, one as
# deployed (embedded dashboard and recorder), one with --no-dashboard --no-history, 1,000
# simulated devices on each, server-sent event clients and headless Chromium on the dashboard.
#
#   bench/dashboard.sh                              the run recorded in docs/performance.md
#   bench/dashboard.sh --devices 200 --secs 20 --intervals 1 --browser-secs 10   a quick one
#   bench/dashboard.sh --no-browser                 without Chromium
#
# Builds the release binaries it needs, raises the open-files limit (4,000 sockets and more)
# and runs pifleet-dashboard-bench (extra arguments go to it; see
# `target/release/pifleet-dashboard-bench --help`), which starts and stops the brokers itself
# in fresh temporary directories. The browser figures need Debian's chromium and
# chromium-driver (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

command_line="bench/dashboard.sh${*:+ $*}"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# Documentation changes do not change the binaries.
git diff --quiet HEAD -- . ":(exclude)*.md" 2>/dev/null || commit="$commit (with uncommitted changes)"

cargo build --release -p pifleet-broker -p pifleet-bench --bin pifleet-broker --bin pifleet-dashboard-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec target/release/pifleet-dashboard-bench --commit "$commit" --command "$command_line" "$@"
