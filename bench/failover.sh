#!/usr/bin/env bash
# Failover gap (issue #4): clients reconnect continuously through the load balancer (plain MQTT on
# 1883, TLS to two mosquitto gateways on 8883); one gateway is killed with SIGKILL. Reports, per
# target, the gap (time from the kill to the start of the last failed connect; 0 when none
# failed) and the number of failed connects, for:
#   nsemu-default   nsemu, no monitor bound (tcp-default: TLS handshake, interval 5 s, retries 3,
#                   resptimeout 2 s)
#   nsemu-interval1 nsemu, a TCP monitor -secure YES -interval 1 -resptimeout 500 MSEC (retries 3)
#   haproxy         HAProxy, `ssl verify none check inter 1s fall 3 rise 2` (checks over TLS),
#                   `retries 2` and `option redispatch 1` (a failed connect goes to the other server)
# Targets are interleaved, REPS rounds. Uses 127.4.9.x only.
#
#   bench/failover.sh                     # NSEMU=path/to/nsemu REPS=3 CLIENTS=20
set -euo pipefail
cd "$(dirname "$0")/.."
NSEMU=${NSEMU:-$( [ -x target/release/nsemu ] && echo target/release/nsemu || echo "${CARGO_TARGET_DIR:-target}/debug/nsemu")}
REPS=${REPS:-3}
CLIENTS=${CLIENTS:-20}
WARM=3            # seconds of traffic before the kill
NET=127.4.9
W=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

wait_port() { # ip port
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on $1:$2" >&2; return 1
}

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/gw.key" -out "$W/gw.crt" -days 2 \
  -subj /CN=gateway >/dev/null 2>&1
declare -A BROKER
start_broker() { # n
  local ip="$NET.1$1"
  cat >"$W/b$1.conf" <<CONF
user root
persistence false
log_type error
listener 8883 $ip
certfile $W/gw.crt
keyfile $W/gw.key
allow_anonymous true
max_connections -1
CONF
  mosquitto -c "$W/b$1.conf" >/dev/null 2>&1 &
  BROKER[$1]=$!; PIDS+=($!)
  wait_port "$ip" 8883
}

start_nsemu() { # monitor: default | interval1
  local d="$W/nsemu-$1"; rm -rf "$d"; mkdir -p "$d/extensions"
  cp examples/extensions/mqtt.lua "$d/extensions/"
  {
    echo "import ns extension local:mqtt.lua mqtt_code"
    echo "add user protocol MQTT -transport TCP -extension mqtt_code"
    echo "add server gw1 $NET.11"
    echo "add server gw2 $NET.12"
    echo "add service svc1 gw1 USER_SSL_TCP 8883"
    echo "add service svc2 gw2 USER_SSL_TCP 8883"
    echo "add lb vserver lb USER_SSL_TCP -lbMethod ROUNDROBIN"
    echo "bind lb vserver lb svc1"
    echo "bind lb vserver lb svc2"
    echo "add user vserver u MQTT $NET.10 1883 -defaultLB lb"
    if [ "$1" = interval1 ]; then
      echo "add lb monitor tcp1 TCP -secure YES -interval 1 -resptimeout 500 MSEC"
      echo "bind service svc1 -monitorName tcp1"
      echo "bind service svc2 -monitorName tcp1"
    fi
  } >"$d/setup.txt"
  RUST_LOG=info "$NSEMU" --config "$d/ns.conf" --socket "$d/nsemu.sock" <"$d/setup.txt" \
    2>"$d/log" >/dev/null &
  TARGET=$!; PIDS+=($!)
  wait_port "$NET.10" 1883
  for s in svc1 svc2; do
    for _ in $(seq 100); do
      "$NSEMU" cli --socket "$d/nsemu.sock" -c "show service $s" 2>/dev/null \
        | grep -q "Last response: Success" && break
      sleep 0.1
    done
  done
  ADDR=$NET.10
}

start_haproxy() {
  cat >"$W/haproxy.cfg" <<CFG
global
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind $NET.20:1883
  default_backend be
backend be
  balance roundrobin
  # As an expert would: retry a failed connect on another server at once.
  retries 2
  option redispatch 1
  server gw1 $NET.11:8883 ssl verify none check inter 1s fall 3 rise 2
  server gw2 $NET.12:8883 ssl verify none check inter 1s fall 3 rise 2
CFG
  haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 &
  TARGET=$!; PIDS+=($!)
  wait_port "$NET.20" 1883
  sleep 1
  ADDR=$NET.20
}

run_case() { # name after-seconds
  local name=$1 after=$2
  case $name in
    nsemu-default) start_nsemu default ;;
    nsemu-interval1) start_nsemu interval1 ;;
    haproxy) start_haproxy ;;
  esac
  python3 bench/failover_client.py "$ADDR" 1883 "$CLIENTS" $((WARM + after)) >"$W/attempts" &
  local client=$!
  sleep "$WARM"
  local killed; killed=$(date +%s.%N)
  kill -9 "${BROKER[1]}"; wait "${BROKER[1]}" 2>/dev/null || true
  wait "$client"
  kill "$TARGET"; wait "$TARGET" 2>/dev/null || true
  python3 - "$name" "$killed" "$W/attempts" <<'PY'
import sys
name, killed, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
rows = [l.split() for l in open(path)]
rows = [(float(t), ok == "1") for t, ok in rows]
after = [(t, ok) for t, ok in rows if t >= killed]
failed = [t for t, ok in after if not ok]
before = sum(1 for t, ok in rows if t < killed and not ok)
gap = (max(failed) - killed) if failed else 0.0
print(f"{name:16} gap {gap:6.2f} s   failed {len(failed):4d} of {len(after):5d} after the kill"
      f"   (failed before the kill: {before})")
PY
  start_broker 1
}

start_broker 1
start_broker 2
echo "nsemu: $NSEMU; $CLIENTS clients, $REPS rounds; $(date -u +%F)"
for r in $(seq "$REPS"); do
  echo "--- round $r"
  run_case nsemu-default 25
  run_case nsemu-interval1 10
  run_case haproxy 10
done
