#!/usr/bin/env bash
# Routes benchmark (issue 17, BENCHMARKS.md "Routes"): the simulator's QoS 1 telemetry profile
# against a release hub with one route, and the same with no route.
#
#   simulator/bench/routes/run.sh MODE THINGS INTERVAL_S DURATION_S [OUT_DIR]
#
# MODE: none (no route), webhook (one webhook route to webhook_receiver.py, batches of up to
# 500), bridge (one MQTT bridge route to a local Mosquitto, a QoS 1 mosquitto_sub counting what
# arrives; Debian's mosquitto-clients). The hub is the simulator's own release build run as an
# external hub (`iothub-sim embedded-hub`, the `iothub` flags) so that its /metrics and PID are
# at hand; the simulator measures it with --hub-pid. That hub reads no config file, so the
# route (the JSON twin of a `[[routes]]` table, written to OUT_DIR/route.json) is created over
# REST before the run. Prints one JSON line of figures; everything is kept in OUT_DIR (default
# /tmp/routes-bench/MODE-HHMMSS).
set -euo pipefail
MODE=$1 THINGS=$2 INTERVAL=$3 DURATION=$4
HERE=$(cd "$(dirname "$0")" && pwd)
SIM=${SIM:-$HERE/../../../target/release/iothub-sim}
OUT=${5:-/tmp/routes-bench/$MODE-$(date +%H%M%S)}
mkdir -p "$OUT"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MQTT=$(port); HTTP=$(port); HOOK=$(port); BROKER=$(port)
TOKEN=bench-token; SECRET=bench-secret
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

: > "$OUT/route.json"
case $MODE in
  none) ;;
  webhook)
    python3 "$HERE/webhook_receiver.py" "$HOOK" "$SECRET" & PIDS+=($!)
    printf '{"id": "bench", "sources": ["telemetry"], "batchMax": 500, "batchDelayMs": 50, "sink": {"type": "webhook", "url": "http://127.0.0.1:%s/hook", "secret": "%s"}}' \
      "$HOOK" "$SECRET" > "$OUT/route.json"
    ;;
  bridge)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000000\nset_tcp_nodelay true\n' \
      "$BROKER" > "$OUT/mosquitto.conf"
    /usr/sbin/mosquitto -c "$OUT/mosquitto.conf" 2> "$OUT/mosquitto.log" & PIDS+=($!)
    until (exec 3<>/dev/tcp/127.0.0.1/$BROKER) 2>/dev/null; do sleep 0.1; done
    stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$BROKER" -q 1 -i bench-sub -t 'bench/#' > "$OUT/bridged.txt" & PIDS+=($!)
    printf '{"id": "bench", "sources": ["telemetry"], "batchMax": 500, "batchDelayMs": 50, "sink": {"type": "mqtt", "url": "mqtt://127.0.0.1:%s", "topicPrefix": "bench/"}}' \
      "$BROKER" > "$OUT/route.json"
    ;;
  *) echo "MODE: none, webhook or bridge" >&2; exit 2 ;;
esac

# The hub: stdin a FIFO this script holds open (the hub stops at its end of file, when the script
# ends), its admin token from the environment.
mkfifo "$OUT/hub.stdin"
exec 9<> "$OUT/hub.stdin"
IOTHUB_ADMIN_TOKEN=$TOKEN RUST_LOG=warn "$SIM" embedded-hub \
  --mqtt-addr "127.0.0.1:$MQTT" --http-addr "127.0.0.1:$HTTP" --data-dir "$OUT/data" \
  < "$OUT/hub.stdin" > "$OUT/hub.out" 2> "$OUT/hub.log" & PIDS+=($!)
HUB_PID=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$HTTP/healthz" > /dev/null && break; sleep 0.1; done
if [ -s "$OUT/route.json" ]; then
  curl -sf -X POST "http://127.0.0.1:$HTTP/api/v1/routes" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' --data @"$OUT/route.json" > /dev/null
fi

cat > "$OUT/scenario.toml" <<TOML
[population]
count = $THINGS
[ramp]
connects_per_s = 500.0
[profile]
reported_changes_per_s = 0.0
telemetry_interval_s = $INTERVAL
telemetry_qos = 1
telemetry_bytes = 100
TOML
metric() { curl -s "http://127.0.0.1:$HTTP/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
"$SIM" run --scenario "$OUT/scenario.toml" --duration "$DURATION" \
  --mqtt "127.0.0.1:$MQTT" --api "http://127.0.0.1:$HTTP" --token "$TOKEN" --hub-pid "$HUB_PID" \
  --progress none --report-json "$OUT/report.json" > "$OUT/report.txt"

# The route drains what is left (the simulator deletes its things afterwards: no new messages).
DRAIN_START=$(date +%s.%N)
if [ "$MODE" != none ]; then
  for _ in $(seq 600); do
    [ "$(metric 'iothub_route_outbox_messages{route="bench"}')" = 0 ] && break
    sleep 0.1
  done
fi
DRAIN=$(echo "$(date +%s.%N) - $DRAIN_START" | bc)
curl -s "http://127.0.0.1:$HTTP/metrics" > "$OUT/metrics.txt"
[ "$MODE" = webhook ] && curl -s "http://127.0.0.1:$HOOK/stats" > "$OUT/receiver.json"
[ "$MODE" = bridge ] && sleep 1
python3 - "$OUT" "$MODE" "$LOAD" "$DRAIN" <<'PY'
import json, sys
out, mode, load, drain = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
r = json.load(open(f"{out}/report.json"))
hub = r["resources"]["hub"] or {}
fig = {"mode": mode, "load_before": load, "things": r["things"], "duration_s": round(r["duration_s"], 1),
       "telemetry_acked": r["telemetry_acked"], "acked_per_s": round(r["telemetry_acked"] / r["duration_s"]),
       "hub_cpu_s_measured": hub.get("measured_cpu_s"), "drain_s": round(drain, 2)}
if hub.get("measured_cpu_s"):
    fig["hub_cpu_us_per_msg"] = round(hub["measured_cpu_s"] / r["telemetry_acked"] * 1e6, 1)
lat = r["latency"].get("telemetry_ack") if isinstance(r.get("latency"), dict) else None
if mode != "none":
    buckets, count, delivered = [], 0, 0
    for line in open(f"{out}/metrics.txt"):
        if line.startswith('iothub_route_delivery_seconds_bucket{route="bench"'):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), int(line.split()[-1])))
        if line.startswith('iothub_route_delivered_total{route="bench"}'):
            delivered = int(line.split()[-1])
    total = buckets[-1][1] if buckets else 0
    def q(p):  # Prometheus' histogram_quantile: linear within the bucket
        rank, prev_le, prev_c = p * total, 0.0, 0
        for le, c in buckets:
            if c >= rank:
                if le == float("inf"):
                    return prev_le * 1000
                return (prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1)) * 1000
            prev_le, prev_c = le, c
    fig.update(delivered=delivered, route_p50_ms=round(q(0.5), 1) if total else None,
               route_p99_ms=round(q(0.99), 1) if total else None)
if mode == "webhook":
    rx = json.load(open(f"{out}/receiver.json"))
    fig.update(receiver_messages=rx["messages"], receiver_posts=rx["posts"],
               receiver_bad_signatures=rx["bad_signatures"], receiver_p50_ms=rx["p50_ms"],
               receiver_p99_ms=rx["p99_ms"])
if mode == "bridge":
    fig["mosquitto_subscriber_messages"] = sum(1 for _ in open(f"{out}/bridged.txt"))
print(json.dumps(fig))
PY
