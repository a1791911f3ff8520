#!/usr/bin/env bash
# The authenticated reconnect storm, pifleet-broker and mosquitto side by side, on loopback:
# a freshly started broker (what a restart leaves: nothing verified yet), N devices (10,000 by
# default) that all connect at once over TLS, each logging in with its own generated secret;
# timed from the moment the broker accepts until every one has CONNACK 0. How long each broker
# took from its start to accepting is printed too: "back within T of a restart" is the sum.
#
#   bench/storm.sh                   the run recorded in docs/performance.md (N = 10,000)
#   bench/storm.sh 1000              a quick one
#   ARGON2=1 bench/storm.sh          also pifleet-broker with argon2id hashes (every entry of a
#                                    file written before the fast scheme, or chosen secrets)
#
# Installs mosquitto (Debian package) if missing and builds release binaries. pifleet-broker
# runs its default configuration with TLS on, a state directory of its own and
# `limits.max_connections_per_ip = 0` (all devices connect from 127.0.0.1; the default allows
# 1,024 per address). mosquitto gets the
# same certificate and a password file from `mosquitto_passwd -U` (its PBKDF2-SHA512 hashes).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -n "${STORM_SKIP_BUILD:-}" ] || cargo build --release --bins
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; }

target/release/pifleet-broker tls self-signed --host localhost --out "$work/tls" >/dev/null
target/release/pifleet-storm fleet --devices "$n" --out "$work/fast"
[ -n "${ARGON2:-}" ] && target/release/pifleet-storm fleet --devices "$n" --out "$work/argon2" --argon2

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# pifleet-broker, started afresh for each storm; readiness is its "MQTT over TLS on" line.
pifleet_storm() { # label fleet-dir
  cat >"$work/broker.toml" <<CONF
[auth]
credentials = "$2/credentials.toml"
[tls]
enabled = true
listen = "127.0.0.1:0"
cert = "$work/tls/server.pem"
key = "$work/tls/server.key"
[limits]
max_connections_per_ip = 0
CONF
  rm -rf "$work/state"
  started=$(date +%s%N)
  RUST_LOG=warn target/release/pifleet-broker --config "$work/broker.toml" --mqtt 127.0.0.1:0 --no-ws \
    --state-dir "$work/state" >"$work/broker.out" 2>"$work/broker.err" &
  pid=$!
  for _ in $(seq 1000); do grep -q "MQTT over TLS on" "$work/broker.out" 2>/dev/null && break; sleep 0.01; done
  ready=$(( ($(date +%s%N) - started) / 1000000 ))
  grep -q "MQTT over TLS on" "$work/broker.out" || { cat "$work/broker.err" >&2; exit 1; }
  addr=$(grep -o "MQTT over TLS on [0-9.:]*" "$work/broker.out" | cut -d' ' -f5)
  echo "pifleet-broker $(target/release/pifleet-broker --version | cut -d' ' -f2) at $addr (pid $pid), accepting ${ready} ms after it was started (credentials file of $n identities read)"
  target/release/pifleet-storm run --target "$1=mqtts://$addr@$pid" --ca-file "$work/tls/ca.pem" --passwords "$2/passwords.txt"
  stop
}

pifleet_storm pifleet-broker "$work/fast"

# mosquitto with a password file (PBKDF2-SHA512) and the same certificate.
cp "$work/fast/passwords.txt" "$work/mosquitto.passwd"
mosquitto_passwd -U "$work/mosquitto.passwd"
mport=$(free_port)
cat >"$work/mosquitto.conf" <<CONF
per_listener_settings false
allow_anonymous false
password_file $work/mosquitto.passwd
listener $mport 127.0.0.1
certfile $work/tls/server.pem
keyfile $work/tls/server.key
set_tcp_nodelay true
max_connections -1
persistence false
# Started as root, mosquitto would switch to user mosquitto, who cannot read this private
# directory (password file, server key).
user root
log_dest file $work/mosquitto.log
log_type error
CONF
started=$(date +%s%N)
"$MOSQUITTO" -c "$work/mosquitto.conf" &
pid=$!
for _ in $(seq 1000); do (exec 3<>/dev/tcp/127.0.0.1/"$mport") 2>/dev/null && break; sleep 0.01; done
kill -0 "$pid" 2>/dev/null || { echo "mosquitto did not start:" >&2; cat "$work/mosquitto.log" >&2; exit 1; }
ready=$(( ($(date +%s%N) - started) / 1000000 ))
echo "$("$MOSQUITTO" -h 2>/dev/null | head -1) at 127.0.0.1:$mport (pid $pid), accepting ${ready} ms after it was started"
target/release/pifleet-storm run --target "mosquitto=mqtts://127.0.0.1:$mport@$pid" --ca-file "$work/tls/ca.pem" --passwords "$work/fast/passwords.txt"
stop

if [ -n "${ARGON2:-}" ]; then
  pifleet_storm "pifleet-broker, argon2id hashes" "$work/argon2"
fi
