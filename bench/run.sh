#!/usr/bin/env bash
# The fleet benchmark, pifleet-broker, mosquitto and stock rumqttd 0.20 side by side, on loopback.
#
#   bench/run.sh                      the full run recorded in docs/performance.md
#   bench/run.sh --fanout 100 --commands 500 --telemetry 20000 --rounds 3    a quick one
#   NO_RUMQTTD=1 bench/run.sh         without the rumqttd column (its build takes minutes)
#
# Installs mosquitto (Debian package) if missing, builds release binaries (and
# bench/rumqttd-host, rumqttd with its stock configuration), starts the brokers on free loopback
# ports (mosquitto with set_tcp_nodelay true, as pifleet's clients use), runs pifleet-bench
# against each, and stops them. Extra arguments go to pifleet-bench. A fleet that has not joined
# within --join-timeout (120 s here) is reported as such: rumqttd 0.20 joins 1,000 devices but
# not 10,000 in that time.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
cargo build --release --bins
if [ -z "${NO_RUMQTTD:-}" ]; then
  (cd bench/rumqttd-host && cargo build --release -q)
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# All 10,000 simulated devices connect from 127.0.0.1, so the per-IP cap (1,024 by default) is
# lifted for the benchmark. The history recorder is off: this compares MQTT engines (mosquitto
# records nothing), and 10,000 benchmark devices do not belong in the user's history directory
# (its own figures: pifleet-history-bench). Everything else is the default configuration, state
# kept on disk included (in a fresh directory, so no earlier run's retained messages are replayed).
cat >"$work/broker.toml" <<CONF
[limits]
max_connections_per_ip = 0

[history]
enabled = false
CONF
target/release/pifleet-broker --config "$work/broker.toml" --mqtt 127.0.0.1:0 --no-ws --state-dir "$work/state" >"$work/broker.out" 2>"$work/broker.err" &
pids+=($!)
broker_pid=$!
for _ in $(seq 100); do grep -q "MQTT on" "$work/broker.out" 2>/dev/null && break; sleep 0.1; done
pifleet_addr=$(grep -o "MQTT on [0-9.:]*" "$work/broker.out" | cut -d' ' -f3)

mport=$(free_port)
cat >"$work/mosquitto.conf" <<CONF
listener $mport 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_connections -1
persistence false
log_dest none
CONF
"$MOSQUITTO" -c "$work/mosquitto.conf" &
pids+=($!)
mosq_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$mport") 2>/dev/null && break; sleep 0.1; done

targets=(--target "pifleet-broker=mqtt://$pifleet_addr@$broker_pid" --target "mosquitto=mqtt://127.0.0.1:$mport@$mosq_pid")
if [ -z "${NO_RUMQTTD:-}" ]; then
  rport=$(free_port)
  bench/rumqttd-host/target/release/rumqttd-host "127.0.0.1:$rport" >"$work/rumqttd.out" 2>&1 &
  pids+=($!)
  rumqttd_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$rport") 2>/dev/null && break; sleep 0.1; done
  targets+=(--target "rumqttd=mqtt://127.0.0.1:$rport@$rumqttd_pid")
  echo "rumqttd 0.20 (stock configuration) at 127.0.0.1:$rport (pid $rumqttd_pid)"
fi

echo "pifleet-broker $(target/release/pifleet-broker --version | cut -d' ' -f2) at $pifleet_addr (pid $broker_pid); $("$MOSQUITTO" -h 2>/dev/null | head -1) at 127.0.0.1:$mport (pid $mosq_pid)"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
case " $* " in *" --join-timeout"*) join=() ;; *) join=(--join-timeout 120) ;; esac
target/release/pifleet-bench "${join[@]}" "${targets[@]}" "$@"
