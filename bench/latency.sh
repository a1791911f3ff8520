#!/usr/bin/env bash
# Confirmation latency only, pifleet-broker and mosquitto measured at once: `pifleet-bench
# --latency-only` sends one command to each target in turn, so on a shared (busy) machine every
# broker sees the same load. Repeated ROUNDS times (default 3) with the targets' order rotated.
#
#   bench/latency.sh                          this tree's broker vs mosquitto, 5,000 commands
#   BASELINE=/path/to/pifleet-broker bench/latency.sh --commands 3000
#                                             a third column: another build of the broker
#   bench/latency.sh --commands 3000 --background 20000
#                                             while each broker carries 20,000 QoS 0 msg/s
#
# Brokers are started as bench/run.sh starts them (per-IP cap lifted, history off, state kept in
# a fresh directory; mosquitto with set_tcp_nodelay true). Extra arguments go to pifleet-bench.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
cargo build --release -q -p pifleet-broker -p pifleet-bench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
printf '[limits]\nmax_connections_per_ip = 0\n\n[history]\nenabled = false\n' >"$work/broker.toml"

targets=()
start_pifleet() { # NAME BINARY
  "$2" --config "$work/broker.toml" --mqtt 127.0.0.1:0 --no-ws --no-dashboard \
    --state-dir "$work/state-$1" >"$work/$1.out" 2>"$work/$1.err" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "MQTT on" "$work/$1.out" 2>/dev/null && break; sleep 0.1; done
  targets+=("$1=mqtt://$(grep -o "MQTT on [0-9.:]*" "$work/$1.out" | cut -d' ' -f3)@$!")
}
start_pifleet pifleet-broker target/release/pifleet-broker
if [ -n "${BASELINE:-}" ]; then start_pifleet baseline "$BASELINE"; fi
mport=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\nlog_dest none\n' \
  "$mport" >"$work/mosquitto.conf"
"$MOSQUITTO" -c "$work/mosquitto.conf" &
pids+=($!)
targets+=("mosquitto=mqtt://127.0.0.1:$mport@$!")
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$mport") 2>/dev/null && break; sleep 0.1; done

echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown); load: $(cut -d' ' -f1-3 /proc/loadavg)"
case " $* " in *" --commands"*) commands=() ;; *) commands=(--commands 5000) ;; esac
n=${#targets[@]}
for round in $(seq 0 $((${ROUNDS:-3} - 1))); do
  args=()
  for k in $(seq 0 $((n - 1))); do args+=(--target "${targets[$(((k + round) % n))]}"); done
  target/release/pifleet-bench --latency-only "${commands[@]}" "${args[@]}" "$@" | grep '^  conf\|^  back\|^=='
done
