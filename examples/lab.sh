#!/usr/bin/env bash
# The MQTT lab on this machine: two mosquitto gateways with TLS on 127.0.0.11:8883 and
# 127.0.0.12:8883 (self-signed), nsemu on 127.0.0.10:1883 (plain) and :8883 (TLS, a certificate
# signed by a lab CA), configured by examples/lab/ns.conf. Shows a message flowing through both
# ports, prints the mosquitto lines to try, then opens the nsemu console (on a terminal) or keeps
# running until Ctrl-C. Everything lives in ./lab-run; every process is stopped on exit.
# Usage: ./examples/lab.sh [--demo]   (--demo: show the flow and exit)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
run="$root/lab-run"
demo=${1:-}

need=()
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if command -v systemctl >/dev/null 2>&1; then systemctl stop mosquitto >/dev/null 2>&1 || true; fi

echo "== building nsemu (release)"
cargo build --release -q
bin="$root/target/release/nsemu"

rm -rf "$run" && mkdir -p "$run/nsconfig/ssl" "$run/nsconfig/extensions" "$run/brokers"
cp examples/lab/ns.conf "$run/nsconfig/ns.conf"
cp examples/extensions/mqtt.lua "$run/nsconfig/extensions/mqtt.lua"

echo "== certificates: lab CA, the VIP's certificate, self-signed gateway certificates"
ssl="$run/nsconfig/ssl"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=nsemu lab CA" \
  -keyout "$run/lab-ca.key" -out "$run/lab-ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.10" -keyout "$ssl/lab-vip.key" -out "$run/vip.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.10,DNS:localhost\n' > "$run/vip.ext"
openssl x509 -req -in "$run/vip.csr" -CA "$run/lab-ca.crt" -CAkey "$run/lab-ca.key" -CAcreateserial \
  -days 30 -extfile "$run/vip.ext" -out "$ssl/lab-vip.crt" 2>/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for n in 1 2; do
  ip="127.0.0.1$n"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=edge$n" \
    -keyout "$run/brokers/edge$n.key" -out "$run/brokers/edge$n.crt" 2>/dev/null
  cat > "$run/brokers/edge$n.conf" <<CONF
user root
persistence false
log_dest file $run/brokers/edge$n.log
listener 8883 $ip
certfile $run/brokers/edge$n.crt
keyfile $run/brokers/edge$n.key
allow_anonymous true
max_inflight_messages 0
CONF
  mosquitto -c "$run/brokers/edge$n.conf" & pids+=($!)
done

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1:$2" >&2; return 1; }
wait_port 127.0.0.11 8883; wait_port 127.0.0.12 8883
echo "== gateways up: 127.0.0.11:8883 and 127.0.0.12:8883 (TLS, self-signed)"

mkfifo "$run/console"
# The appliance reads its console from a FIFO held open by this script, so that it keeps serving
# in the background while the demo runs; on a terminal the admin then gets `nsemu cli`.
sleep infinity > "$run/console" & pids+=($!)
"$bin" --config "$run/nsconfig/ns.conf" < "$run/console" 2> "$run/nsemu.log" & pids+=($!)
for _ in $(seq 1 100); do grep -q "nsemu ready" "$run/nsemu.log" 2>/dev/null && break; sleep 0.1; done
grep -q "nsemu ready" "$run/nsemu.log" || { cat "$run/nsemu.log"; exit 1; }
wait_port 127.0.0.10 1883; wait_port 127.0.0.10 8883
echo "== nsemu up: 127.0.0.10:1883 (MQTT) and 127.0.0.10:8883 (MQTT over TLS)"
cli() { "$bin" cli --socket "$run/nsconfig/nsemu.sock" "$@"; }
cli -c "show lb vserver lb_vserver_azureiot"

echo "== demo: one device, ClientID MosquittoDevice, through both ports"
# mqtt.lua hands each device's ClientID to the balancer (-lbMethod USER_TOKEN), so a device keeps
# its gateway whichever port it uses: its telemetry and its cloud-to-device subscription meet on
# the same broker (the gateways are not bridged).
wait_line() { # file pattern: wait until a subscriber has its SUBACK
  for _ in $(seq 1 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no '$2' in $1" >&2; return 1
}
for n in 1 2; do
  stdbuf -oL mosquitto_sub -d -h "127.0.0.1$n" -p 8883 --insecure --cafile "$run/brokers/edge$n.crt" -i "watch$n" \
    -t 'devices/MosquittoDevice/messages/events/#' -C 2 -W 15 -v > "$run/edge$n.txt" & pids+=($!)
  wait_line "$run/edge$n.txt" SUBACK
done
echo "-- telemetry through 1883 (plain MQTT -> TLS to the gateway), then through 8883 (TLS -> TLS)"
mosquitto_pub -d -h 127.0.0.10 -p 1883 -V mqttv311 -i MosquittoDevice \
  -t "devices/MosquittoDevice/messages/events/readpipe/" -m "Hello World!"
mosquitto_pub -d -h 127.0.0.10 -p 8883 --cafile "$run/lab-ca.crt" -V mqttv311 -i MosquittoDevice \
  -t "devices/MosquittoDevice/messages/events/readpipe/" -m "Hello over TLS!"
gw=""
for _ in $(seq 1 100); do
  for n in 1 2; do [ "$(grep -c '^devices/' "$run/edge$n.txt" 2>/dev/null)" = 2 ] && gw=$n; done
  [ -n "$gw" ] && break; sleep 0.1
done
for n in 1 2; do echo "-- seen on gateway edge$n: $(grep '^devices/' "$run/edge$n.txt" | tr '\n' ' ')"; done
[ -n "$gw" ] || { echo "the two messages did not meet on one gateway" >&2; exit 1; }
echo "-- both on edge$gw: the device kept its gateway"
echo "-- cloud-to-device: the device subscribes through 8883; the cloud publishes on edge$gw"
stdbuf -oL mosquitto_sub -d -h 127.0.0.10 -p 8883 --cafile "$run/lab-ca.crt" -V mqttv311 -i MosquittoDevice \
  -t 'devices/MosquittoDevice/messages/devicebound/#' -C 1 -W 15 -v > "$run/device.txt" & subpid=$!
wait_line "$run/device.txt" SUBACK
mosquitto_pub -h "127.0.0.1$gw" -p 8883 --insecure --cafile "$run/brokers/edge$gw.crt" -i cloud \
  -t 'devices/MosquittoDevice/messages/devicebound/cmd' -m "reboot, please"
wait "$subpid" 2>/dev/null || true
echo "-- the device received: $(grep '^devices/' "$run/device.txt")"
cli -c "stat user vserver"

cat <<TRY

== try it yourself
  mosquitto_pub -d -h 127.0.0.10 -p 1883 -V mqttv311 -i MosquittoDevice -t "devices/MosquittoDevice/messages/events/readpipe/" -m "Hello World!"
  mosquitto_sub -d -h 127.0.0.10 -p 8883 -V mqttv311 --cafile $run/lab-ca.crt -i MosquittoDevice -t "devices/MosquittoDevice/messages/devicebound/#"
  $bin cli --socket $run/nsconfig/nsemu.sock        (the admin shell; try: show lb vs, stat service)
TRY
[ "$demo" = "--demo" ] && exit 0
if [ -t 0 ]; then
  cli
else
  echo "== running; Ctrl-C stops the lab"
  wait
fi
