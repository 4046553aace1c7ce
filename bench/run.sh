#!/bin/sh
# `make bench`: runs every benchmark on this machine, side by side with its
# baseline, and writes docs/BENCHMARKS.md. Every figure in that file comes from
# this run; nothing is written by hand. Not part of `make test`.
#   RUNS=N        runs per measurement (default 3); QUICK=1 for a smoke run
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
RUNS=${RUNS:-3}
OUT=docs/BENCHMARKS.md
RES=bench/results
mkdir -p "$RES"
quick=""
[ "${QUICK:-0}" = 1 ] && quick="--quick" && RUNS=1

echo "bench: bus ($RUNS runs)" >&2
: > "$RES/bus.jsonl"
i=0
while [ $i -lt "$RUNS" ]; do
  ./$BUILD/bench_bus 20000 32 2 >> "$RES/bus.jsonl"
  i=$((i + 1))
done
/usr/bin/python3 bench/bus_report.py "$RES/bus.jsonl" > "$RES/bus.md"

echo "bench: HTTP API (iotfin, Express baseline, nginx ceiling)" >&2
/usr/bin/python3 bench/http_bench.py $quick --runs "$RUNS" --iotfin-bin "./$BUILD/iotfin" \
  --out "$RES/http.json" --markdown "$RES/http.md" >/dev/null

if [ -f bench/device_bench.py ]; then
  echo "bench: devices (command round trip, events in, start/stop, memory)" >&2
  /usr/bin/python3 bench/device_bench.py $quick --runs "$RUNS" --iotfin-bin "./$BUILD/iotfin" \
    --out "$RES/devices.json" --markdown "$RES/devices.md" >/dev/null
fi

echo "bench: profile" >&2
/usr/bin/python3 bench/profile.py > "$RES/profile.md" 2>/dev/null || echo "## Profile\n\nThe profile run failed." > "$RES/profile.md"

{
  echo "# Benchmarks"
  echo
  echo "Written by \`make bench\` (bench/run.sh) on $(date -u +%Y-%m-%dT%H:%MZ); do not edit by hand."
  echo "Each section names its machine state, versions, settings and exact commands."
  echo
  /usr/bin/python3 bench/targets.py "$RES"
  echo
  cat "$RES/bus.md"
  echo
  cat "$RES/http.md"
  if [ -f "$RES/devices.md" ]; then
    echo
    cat "$RES/devices.md"
  fi
  echo
  cat "$RES/profile.md"
} > "$OUT"
echo "bench: wrote $OUT" >&2
