#!/usr/bin/env bash
# The soak: one pifleet-broker under attack, on loopback, while a canary device keeps confirming
# commands.
#
#   bench/soak.sh                       the run recorded in docs/performance.md (60 s of floods)
#   bench/soak.sh --secs 20             shorter
#   bench/soak.sh --skip websocket      leave floods out (logins, subscriptions, retained,
#                                       sessions, websocket, takeovers, lurkers)
#
# Builds release binaries, makes a private CA and server certificate (`tls self-signed`) and the
# identities (devices canary, attacker, hoarder, fighter, chatter; controllers soak, probe),
# starts pifleet-broker with TLS, credentials and the WebSocket listener on free loopback ports
# and otherwise default limits, runs pifleet-soak against it (extra arguments go to it; see
# `target/release/pifleet-soak --help`), then summarises the broker's log and stops it. Exit
# code: pifleet-soak's (0 PASS, 1 FAIL, 2 could not run).
set -euo pipefail
cd "$(dirname "$0")/.."

command_line="bench/soak.sh${*:+ $*}"
commit=$(git rev-parse --short HEAD)
# Documentation changes do not change the binaries.
git diff --quiet HEAD -- . ":(exclude)*.md" 2>/dev/null || commit="$commit (with uncommitted changes)"

cargo build --release --bins
# About 1,100 unfinished WebSocket upgrades and hundreds of logins are open at once, on both
# sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
broker_pid=
cleanup() {
  if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
    kill "$broker_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

broker=target/release/pifleet-broker
$broker tls self-signed --host localhost --out "$work" >/dev/null
for device in canary attacker hoarder fighter chatter; do
  $broker --credentials "$work/credentials.toml" device add "$device" >"$work/$device.secret" 2>/dev/null
done
for controller in soak probe; do
  $broker --credentials "$work/credentials.toml" controller add "$controller" >"$work/$controller.secret" 2>/dev/null
done

# Default limits: every flood comes from a loopback address of its own (127.0.0.2 and up), so
# each meets the per-IP cap by itself and the canary (127.0.0.1) is never locked out.
cat >"$work/broker.toml" <<CONF
[tls]
cert = "server.pem"
key = "server.key"

[auth]
credentials = "credentials.toml"

# The recorder stays on, as deployed, but writes into the work directory (removed at the end),
# never into the user's default history directory.
[history]
dir = "history"
CONF
$broker --config "$work/broker.toml" --mqtt 127.0.0.1:0 --ws 127.0.0.1:0 --mqtts 127.0.0.1:0 \
  >"$work/broker.out" 2>"$work/broker.err" &
broker_pid=$!
for _ in $(seq 100); do grep -q "clients must log in" "$work/broker.out" 2>/dev/null && break; sleep 0.1; done
addr() { grep -o "$1 on [0-9.:]*" "$work/broker.out" | awk '{print $NF}'; }
mqtt=$(addr "MQTT")
ws=$(addr "WebSocket")
mqtts=$(addr "TLS")
if [ -z "$mqtt" ] || [ -z "$ws" ] || [ -z "$mqtts" ]; then
  echo "soak.sh: the broker did not start:" >&2
  cat "$work/broker.out" "$work/broker.err" >&2
  exit 2
fi

rc=0
target/release/pifleet-soak --mqtt "$mqtt" --mqtts "$mqtts" --ws "$ws" --broker-pid "$broker_pid" \
  --ca-file "$work/ca.pem" --secrets "$work" --commit "$commit" --command "$command_line" "$@" || rc=$?

echo
echo "== broker log ($(wc -l <"$work/broker.err") lines on stderr; messages by count, fields left out)"
# "2026-…Z  WARN pifleet_broker::engine: refused: BadPassword peer=…" -> "WARN refused: BadPassword"
sed -E 's/\x1b\[[0-9;]*m//g' "$work/broker.err" \
  | sed -E 's/^[^ ]+ +([A-Z]+) [^ ]+: /\1 /; s/ [a-z_]+=("[^"]*"|[^ ]*)//g' \
  | sort | uniq -c | sort -rn | head -15
if kill -0 "$broker_pid" 2>/dev/null; then
  echo "broker still running (pid $broker_pid); stopping it"
else
  wait "$broker_pid" && code=0 || code=$?
  echo "broker exited with code $code before the end; its last lines:"
  tail -5 "$work/broker.err"
  [ "$rc" -eq 0 ] && rc=1
fi
exit "$rc"
