#!/bin/bash
# Reconnect storm (issue 6): runs THINGS virtual things against a separately started hub and
# restarts that hub (SIGTERM, then the same command line on the same data directory) AFTER
# seconds into the measured period. The report's `lost->resynced` row gives the time from each
# lost connection to the shadow document after the reconnect.
#
#   HUB_BIN=target/release/iothub SIM_BIN=target/release/iothub-sim \
#   THINGS=10000 DURATION=50 AFTER=10 simulator/scripts/reconnect-storm.sh
#
# Ports 18831 (MQTT) and 19001 (HTTP), data in /tmp/storm-hub; prints the report and a log of
# the restart (storm.log in OUT, default /tmp/storm).
set -euo pipefail
HUB_BIN=${HUB_BIN:-target/release/iothub}
SIM_BIN=${SIM_BIN:-target/release/iothub-sim}
THINGS=${THINGS:-10000}
DURATION=${DURATION:-50}
AFTER=${AFTER:-10}
RATE=${RATE:-2000}
OUT=${OUT:-/tmp/storm}
DATA=${DATA:-/tmp/storm-hub}
mkdir -p "$OUT"
hub_cmd=("$HUB_BIN" --mqtt-addr 127.0.0.1:18831 --http-addr 127.0.0.1:19001 --data-dir "$DATA" --admin-token tok)

start_hub() {
    "${hub_cmd[@]}" > "$OUT/hub-$1.out" 2> "$OUT/hub-$1.err" < /dev/null &
    HUB=$!
    until grep -q ready "$OUT/hub-$1.out" 2>/dev/null; do
        kill -0 "$HUB" || { echo "hub did not start" >&2; exit 1; }
        sleep 0.1
    done
}

log() { echo "$(date +%T.%N) $*" | tee -a "$OUT/storm.log"; }

start_hub 1
"$SIM_BIN" run --things "$THINGS" --rate "$RATE" --duration "$DURATION" --ramp 2000 \
    --mqtt 127.0.0.1:18831 --api http://127.0.0.1:19001 --token tok --id-prefix storm \
    --report-json "$OUT/report.json" > "$OUT/report.txt" 2> "$OUT/sim.err" &
SIM=$!
until grep -q measuring "$OUT/sim.err" 2>/dev/null; do
    kill -0 "$SIM" || { echo "simulator ended early" >&2; exit 1; }
    sleep 0.5
done
sleep "$AFTER"
log "stopping hub $HUB"
kill -TERM "$HUB"
wait "$HUB" || true
log "hub stopped; starting again"
start_hub 2
log "hub ready again"
set +e
wait "$SIM"
rc=$?
set -e
log "simulator exit $rc (1 = not clean, expected: every connection was lost)"
cat "$OUT/report.txt"
kill -TERM "$HUB"
wait "$HUB" || true
