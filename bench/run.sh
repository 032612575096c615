#!/usr/bin/env bash
# nsemu against HAProxy and NGINX (and a direct broker connection), in one run, on loopback only.
#
#   bench/run.sh [--quick] [--reps N] [--hold N] [--nginx-default-backend-tls]
#
# Two mosquitto brokers (TLS on 127.9.0.11:8883 and 127.9.0.12:8883, self-signed RSA-2048) sit
# behind three proxies, each with a plain MQTT front on 1883 and a TLS front on 8883 (RSA-2048
# certificate signed by a bench CA) that re-encrypt to the brokers, balancing round robin:
#   nsemu   127.9.1.10 (the lab config: user vservers with mqtt.lua; 2883: TCP lb vserver, no extension)
#   HAProxy 127.9.2.10   NGINX 127.9.3.10   direct: 127.9.0.11:8883 (TLS)
# Figures (examples/mqtt_load.rs does the client side; see benchmarking.md for the method):
#   tput0/tput1  publish throughput, QoS 0 64 B / QoS 1 1 KiB, and the proxy's CPU per message
#   lat          publish-to-receive latency p50/p99, QoS 0 at 1,000 msg/s
#   conn         new connections/s, concurrency 32, full TLS 1.3 handshake on the TLS fronts, and
#                the proxy's CPU per connection
#   hold         RSS/PSS per held idle MQTT connection (fresh proxy process, N connections)
# Repetitions are interleaved (rep 1 of every target, then rep 2, ...); the summary gives medians.
# Needs: mosquitto, haproxy, nginx with the stream module, openssl, python3 (apt-get install -y
# mosquitto haproxy nginx-light libnginx-mod-stream openssl). Every process it starts is stopped
# by PID on exit. Results: $BENCH_OUT (default /tmp/nsemu-bench.*)/raw.txt and summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=0 reps=5 hold_n=9500
nginx_backend_tls="proxy_ssl_protocols TLSv1.2 TLSv1.3;"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; reps=1; hold_n=2000 ;;
    --reps) reps=$2; shift ;;
    --hold) hold_n=$2; shift ;;
    --nginx-default-backend-tls) nginx_backend_tls="" ;;
    *) echo "usage: $0 [--quick] [--reps N] [--hold N] [--nginx-default-backend-tls]" >&2; exit 2 ;;
  esac
  shift
done
if [ $quick = 1 ]; then
  q0_count=30000 q1_count=10000 lat_secs=3 conn_secs=3
else
  q0_count=200000 q1_count=50000 lat_secs=6 conn_secs=5
fi

for c in mosquitto haproxy nginx openssl python3; do
  command -v $c >/dev/null || { echo "missing $c (apt-get install -y mosquitto haproxy nginx-light libnginx-mod-stream openssl)" >&2; exit 1; }
done
stream_mod=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f $stream_mod ] || { echo "missing $stream_mod (apt-get install -y libnginx-mod-stream)" >&2; exit 1; }

ulimit -n "$(ulimit -Hn)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
echo "== building nsemu and the load generator (release)"
cargo build --release -q --bin nsemu --example mqtt_load
nsemu_bin=$CARGO_TARGET_DIR/release/nsemu
load=$CARGO_TARGET_DIR/release/examples/mqtt_load

run=${BENCH_OUT:-$(mktemp -d /tmp/nsemu-bench.XXXXXX)}
mkdir -p "$run"
raw=$run/raw.txt
: > "$raw"
echo "== results in $run"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
stop() { # stop one process we started, by PID
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=()
  for p in "${pids[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
  pids=("${keep[@]}")
}
wait_port() {
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on $1:$2" >&2; return 1
}

B1=127.9.0.11 B2=127.9.0.12 NS=127.9.1.10 HA=127.9.2.10 NG=127.9.3.10

echo "== certificates (RSA-2048)"
c=$run/certs && mkdir -p "$c"
openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=nsemu bench CA" \
  -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=bench-vip" -keyout "$c/vip.key" -out "$c/vip.csr" 2>/dev/null
printf 'subjectAltName=IP:%s,IP:%s,IP:%s\n' $NS $HA $NG > "$c/vip.ext"
openssl x509 -req -in "$c/vip.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial -days 7 \
  -extfile "$c/vip.ext" -out "$c/vip.crt" 2>/dev/null
cat "$c/vip.crt" "$c/vip.key" > "$c/vip.pem"

echo "== brokers"
for n in 1 2; do
  ip=127.9.0.1$n
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=edge$n" \
    -keyout "$c/edge$n.key" -out "$c/edge$n.crt" 2>/dev/null
  cat > "$run/edge$n.conf" <<CONF
user root
persistence false
log_type error
log_dest file $run/edge$n.log
listener 8883 $ip
certfile $c/edge$n.crt
keyfile $c/edge$n.key
allow_anonymous true
max_inflight_messages 0
set_tcp_nodelay true
CONF
  mosquitto -c "$run/edge$n.conf" & pids+=($!)
done
wait_port $B1 8883; wait_port $B2 8883

# --- nsemu: the lab configuration, as ns.conf, plus (for the extension-cost figures) an
# addressable TCP lb vserver on 2883 over SSL_TCP services to the same brokers: the same plain
# front and TLS re-encryption without any extension callback (nsemu refuses an extension that
# defines no callback, so a user vserver always runs one).
mkdir -p "$run/nsemu/ssl" "$run/nsemu/extensions"
cp "$c/vip.crt" "$c/vip.key" "$run/nsemu/ssl/"
cp examples/extensions/mqtt.lua "$run/nsemu/extensions/"
cat > "$run/nsemu/ns.conf" <<CONF
import ns extension local:mqtt.lua mqtt_code
add user protocol MQTT -transport TCP -extension mqtt_code
add user protocol MQTT_SSL -transport SSL -extension mqtt_code
add server AzureIOTEdge1 $B1
add server AzureIOTEdge2 $B2
add service lb_service_azureiot1 AzureIOTEdge1 USER_SSL_TCP 8883
add service lb_service_azureiot2 AzureIOTEdge2 USER_SSL_TCP 8883
add ssl certKey bench_vip -cert vip.crt -key vip.key
add lb vserver lb_vserver_azureiot USER_SSL_TCP -lbMethod ROUNDROBIN
bind lb vserver lb_vserver_azureiot lb_service_azureiot1
bind lb vserver lb_vserver_azureiot lb_service_azureiot2
bind ssl vserver lb_vserver_azureiot -certkeyName bench_vip
add user vserver u_vserver_azureiot MQTT $NS 1883 -defaultLB lb_vserver_azureiot
add user vserver u_vserver_azureiot_ssl MQTT_SSL $NS 8883 -defaultLB lb_vserver_azureiot
add service noext_service1 AzureIOTEdge1 SSL_TCP 8883
add service noext_service2 AzureIOTEdge2 SSL_TCP 8883
add lb vserver lb_vserver_noext TCP $NS 2883 -lbMethod ROUNDROBIN
bind lb vserver lb_vserver_noext noext_service1
bind lb vserver lb_vserver_noext noext_service2
bind ssl vserver u_vserver_azureiot_ssl -certkeyName bench_vip
CONF

cat > "$run/haproxy.cfg" <<CONF
global
    nbthread 2
    maxconn 9900
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-server-options ssl-min-ver TLSv1.2
    log stderr format raw local0 err
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 180s
    timeout server 360s
    maxconn 9900
frontend mqtt
    bind $HA:1883
    default_backend edges
frontend mqtts
    bind $HA:8883 ssl crt $c/vip.pem
    default_backend edges
backend edges
    balance roundrobin
    server edge1 $B1:8883 ssl verify none
    server edge2 $B2:8883 ssl verify none
CONF

mkdir -p "$run/nginx"
cat > "$run/nginx/nginx.conf" <<CONF
load_module $stream_mod;
worker_processes 2;
worker_rlimit_nofile 20000;
error_log $run/nginx/error.log error;
pid $run/nginx/nginx.pid;
events { worker_connections 19900; }
stream {
    upstream edges { server $B1:8883; server $B2:8883; }
    proxy_ssl on;
    # NGINX 1.22's default here is TLSv1 TLSv1.1 TLSv1.2: it would resume backend sessions with
    # TLS 1.2 tickets (no key exchange) while nsemu and HAProxy negotiate TLS 1.3 with the brokers
    # (resumption with X25519). Same protocol for all three; --nginx-default-backend-tls keeps the
    # Debian default for comparison.
    $nginx_backend_tls
    proxy_ssl_session_reuse on;
    proxy_connect_timeout 5s;
    proxy_timeout 360s;
    server { listen $NG:1883 backlog=1024; proxy_pass edges; }
    server {
        listen $NG:8883 ssl backlog=1024;
        ssl_certificate $c/vip.crt;
        ssl_certificate_key $c/vip.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_pass edges;
    }
}
CONF

declare -A PID
start_nsemu() {
  "$nsemu_bin" --config "$run/nsemu/ns.conf" --socket "$run/nsemu/nsemu.sock" </dev/null 2>"$run/nsemu.log" &
  PID[nsemu]=$!; pids+=($!)
  for _ in $(seq 1 200); do grep -q "nsemu ready" "$run/nsemu.log" && break; sleep 0.05; done
  grep -q "nsemu ready" "$run/nsemu.log" || { cat "$run/nsemu.log" >&2; exit 1; }
  wait_port $NS 1883; wait_port $NS 8883; wait_port $NS 2883
}
start_haproxy() {
  haproxy -db -f "$run/haproxy.cfg" 2>>"$run/haproxy.log" &
  PID[haproxy]=$!; pids+=($!)
  wait_port $HA 1883; wait_port $HA 8883
}
start_nginx() {
  nginx -p "$run/nginx/" -e "$run/nginx/error.log" -c "$run/nginx/nginx.conf" -g 'daemon off;' &
  PID[nginx]=$!; pids+=($!)
  wait_port $NG 1883; wait_port $NG 8883
}
echo "== proxies"
start_nsemu; start_haproxy; start_nginx

# target -> "address tls-flag proxy"
declare -A T=(
  [direct]="$B1:8883 --tls -"
  [nsemu-plain]="$NS:1883 - nsemu"
  [nsemu-tls]="$NS:8883 --tls nsemu"
  [nsemu-noext]="$NS:2883 - nsemu"
  [haproxy-plain]="$HA:1883 - haproxy"
  [haproxy-tls]="$HA:8883 --tls haproxy"
  [nginx-plain]="$NG:1883 - nginx"
  [nginx-tls]="$NG:8883 --tls nginx"
)
main_targets=(direct nsemu-plain nsemu-tls haproxy-plain haproxy-tls nginx-plain nginx-tls)

measure() { # figure target rep mqtt_load-args...
  local fig=$1 tgt=$2 rep=$3; shift 3
  read -r addr tls proxy <<<"${T[$tgt]}"
  [ "$tls" = - ] && tls=""
  local pidarg=()
  [ "$proxy" != - ] && pidarg=(--pids "${PID[$proxy]}")
  local out
  if out=$("$load" "$@" $tls "${pidarg[@]}" 2>&1 | tail -1); then :; fi
  case "$out" in
    "{"*) ;;
    *) out="{\"error\":\"$(echo "$out" | tr -d '"\\' | head -c 200)\"}" ;;
  esac
  echo "$fig $tgt $rep $out" >> "$raw"
  printf '%-6s %-14s rep %s %s\n' "$fig" "$tgt" "$rep" "$out"
}
addr_of() { read -r a _ _ <<<"${T[$1]}"; echo "$a"; }

t_start=$(date +%s)
for rep in $(seq 1 "$reps"); do
  echo "== repetition $rep of $reps"
  for tgt in "${main_targets[@]}"; do
    a=$(addr_of "$tgt")
    measure tput0 "$tgt" "$rep" throughput --pub "$a" --sub "$a" --qos 0 --size 64 --count $q0_count --window 64
  done
  for tgt in "${main_targets[@]}"; do
    a=$(addr_of "$tgt")
    measure tput1 "$tgt" "$rep" throughput --pub "$a" --sub "$a" --qos 1 --size 1024 --count $q1_count --window 64
  done
  for tgt in "${main_targets[@]}"; do
    a=$(addr_of "$tgt")
    measure lat "$tgt" "$rep" latency --pub "$a" --sub "$a" --rate 1000 --secs $lat_secs
  done
  for tgt in "${main_targets[@]}" nsemu-noext; do
    a=$(addr_of "$tgt")
    measure conn "$tgt" "$rep" connect --addr "$a" --concurrency 32 --secs $conn_secs
  done
done

echo "== memory per held connection ($hold_n held, fresh process each)"
restart() {
  stop "${PID[$1]}"
  "start_$1"
}
for tgt in nsemu-plain nsemu-noext nsemu-tls haproxy-plain haproxy-tls nginx-plain nginx-tls; do
  read -r a _ proxy <<<"${T[$tgt]}"
  restart "$proxy"
  measure hold "$tgt" 1 hold --addr "$a" --n "$hold_n" --concurrency 32
done
echo "== done in $(( $(date +%s) - t_start )) s of measurement"

python3 - "$raw" "$run/summary.md" <<'PY'
import json, statistics, sys
raw, out = sys.argv[1], sys.argv[2]
d = {}
for line in open(raw):
    fig, tgt, rep, js = line.split(" ", 3)
    try:
        d.setdefault((fig, tgt), []).append(json.loads(js))
    except ValueError:
        pass
def med(fig, tgt, key):
    v = [r[key] for r in d.get((fig, tgt), []) if key in r]
    return statistics.median(v) if v else None
rows = [
    ("QoS 0 64 B: msgs/s end to end", "tput0", "rate", "{:,.0f}"),
    ("QoS 0 64 B: proxy CPU per delivered msg (us)", "tput0", "cpu_us_per_msg", "{:.2f}"),
    ("QoS 1 1 KiB: msgs/s end to end", "tput1", "rate", "{:,.0f}"),
    ("QoS 1 1 KiB: proxy CPU per delivered msg (us)", "tput1", "cpu_us_per_msg", "{:.2f}"),
    ("latency p50, QoS 0 at 1,000 msg/s (us)", "lat", "p50_us", "{:.0f}"),
    ("latency p99, QoS 0 at 1,000 msg/s (us)", "lat", "p99_us", "{:.0f}"),
    ("new connections/s, concurrency 32", "conn", "rate", "{:,.0f}"),
    ("proxy CPU per new connection (us)", "conn", "cpu_us_per_conn", "{:.0f}"),
    ("RSS per held idle connection (KB)", "hold", "rss_kb_per_conn", "{:.1f}"),
    ("PSS per held idle connection (KB)", "hold", "pss_kb_per_conn", "{:.1f}"),
]
def cell(fig, tgt, key, fmt):
    v = med(fig, tgt, key)
    return "-" if v is None else fmt.format(v)
def ratio(fig, tgt, key):
    a, b = med(fig, tgt, key), med(fig, tgt.replace("nsemu", "haproxy"), key)
    return "-" if not a or not b else "{:.2f}".format(a / b)
lines = []
for front in ("plain", "tls"):
    lines.append(f"\n### {'plain 1883' if front == 'plain' else 'TLS 8883'} front (direct = TLS to one broker)\n")
    lines.append("| figure | direct | nsemu | HAProxy | NGINX | nsemu / HAProxy | NGINX / HAProxy |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, fig, key, fmt in rows:
        n, h, g = f"nsemu-{front}", f"haproxy-{front}", f"nginx-{front}"
        hv = med(fig, h, key)
        gv = med(fig, g, key)
        lines.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            name, cell(fig, "direct", key, fmt) if fig != "hold" and not key.startswith("cpu_") else "-",
            cell(fig, n, key, fmt), cell(fig, h, key, fmt), cell(fig, g, key, fmt),
            ratio(fig, n, key), "-" if not hv or not gv else "{:.2f}".format(gv / hv)))
lines.append("\n### nsemu plain front: mqtt.lua extension (1883) vs no extension callbacks (2883)\n")
lines.append("| figure | with mqtt.lua | without | with / without |")
lines.append("|---|---|---|---|")
for name, fig, key, fmt in [rows[6], rows[7], rows[8]]:
    a, b = med(fig, "nsemu-plain", key), med(fig, "nsemu-noext", key)
    lines.append("| {} | {} | {} | {} |".format(name, cell(fig, "nsemu-plain", key, fmt),
        cell(fig, "nsemu-noext", key, fmt), "-" if not a or not b else "{:.2f}".format(a / b)))
lines.append("\nloss/errors: " + ", ".join(
    f"{fig}/{tgt}: " + "/".join(str(r.get("sent", 0) - r.get("received", 0)) if fig.startswith("tput") or fig == "lat" else str(r.get("errors", r.get("error", "?"))) for r in rs)
    for (fig, tgt), rs in sorted(d.items())))
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
echo "== summary: $run/summary.md"
