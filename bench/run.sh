#!/bin/sh
# `make bench`: runs every benchmark on this machine, side by side with its
# baseline, and writes docs/BENCHMARKS.md. Every figure in that file comes from
# a run of this script; nothing is written by hand. Not part of `make test`.
#   RUNS=N        runs per measurement (default 3); QUICK=1 for a smoke run
#   ONLY=a,b      rerun only these steps (bus, http, devices, connected, pg, profile); the other
#                 sections are kept from the previous report, marked with their run
# Progress goes to standard error, a line per step with the time since the start.
# The figures are also drawn as SVG charts in docs/bench/ (bench/charts.py) and linked
# from the report; `make bench-charts` redraws them from bench/results alone.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
RUNS=${RUNS:-3}
OUT=docs/BENCHMARKS.md
RES=bench/results
STEPS=${ONLY:-bus,http,devices,connected,pg,profile}
mkdir -p "$RES"
quick=""
[ "${QUICK:-0}" = 1 ] && quick="--quick" && RUNS=1
T0=$(date +%s)
step() { echo "bench: [$(($(date +%s) - T0)) s] $*" >&2; }
has() { case ",$STEPS," in *",$1,"*) return 0 ;; esac; return 1; }
# measure NAME HEADING CMD...: runs a benchmark that writes $RES/NAME.json and NAME.md;
# a failure is said as a step, and a run that left no section leaves one saying so.
measure() {
  name=$1 heading=$2
  shift 2
  rm -f "$RES/$name.md" "$RES/$name.json"
  "$@" --out "$RES/$name.json" --markdown "$RES/$name.md" >/dev/null ||
    step "$name: the benchmark reported problems (listed in its section)"
  [ -s "$RES/$name.md" ] || printf '%s\n\nThe run failed (see its output above).\n' "$heading" > "$RES/$name.md"
}
cp "$OUT" "$RES/previous.md" 2>/dev/null || : > "$RES/previous.md"
step "steps: $STEPS; RUNS=$RUNS${quick:+ QUICK=1}; load average $(cut -d' ' -f1-3 /proc/loadavg)"

if has bus; then
  step "bus ($RUNS runs)"
  : > "$RES/bus.jsonl"
  i=0
  while [ $i -lt "$RUNS" ]; do
    ./$BUILD/bench_bus 20000 32 2 >> "$RES/bus.jsonl"
    i=$((i + 1))
    step "bus run $i of $RUNS done"
  done
  /usr/bin/python3 bench/bus_report.py "$RES/bus.jsonl" > "$RES/bus.md"
fi

if has http; then
  step "HTTP API (iotfin, Express baseline, nginx ceiling)"
  /usr/bin/python3 bench/http_bench.py $quick --runs "$RUNS" --iotfin-bin "./$BUILD/iotfin" \
    --out "$RES/http.json" --markdown "$RES/http.md" >/dev/null
fi

if has devices; then
  if ! command -v mosquitto_pub >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing mosquitto-clients (the device benchmark's publishers)"
    apt-get install -y -q mosquitto-clients >/dev/null
  fi
  step "devices (command round trip, events in, a 200-device fleet with the durable PUBACK beside the disk's limit and the old path, start/stop, memory)"
  /usr/bin/python3 bench/device_bench.py $quick --runs "$RUNS" --iotfin-bin "./$BUILD/iotfin" \
    --out "$RES/devices.json" --markdown "$RES/devices.md" >/dev/null ||
    step "devices: the benchmark reported problems (listed in its section)"
fi

if has connected; then
  # Issue #14: 10,000 devices connected at once (build/bench_fleet), a ping from each.
  # One run: it is a memory figure, and provisioning 10,000 devices takes minutes.
  step "connected (10,000 devices held by iotfin's managed broker, a ping from each)"
  measure connected "## Connected devices" /usr/bin/python3 bench/device_bench.py $quick \
    --runs 1 --sections connected --iotfin-bin "./$BUILD/iotfin" --bench-fleet "./$BUILD/bench_fleet"
fi

if has pg; then
  # A throwaway PostgreSQL with its durable defaults (scripts/pg.sh), removed afterwards.
  step "PostgreSQL (the bus beside one-row commits, HTTP beside SQLite, one instance and three)"
  measure pg "## PostgreSQL" sh scripts/pg.sh run /usr/bin/python3 bench/pg_bench.py $quick \
    --runs "$RUNS" --iotfin-bin "./$BUILD/iotfin" --bench-bus "./$BUILD/bench_bus"
fi

if has profile; then
  step "profile"
  /usr/bin/python3 bench/profile.py > "$RES/profile.md" 2>/dev/null ||
    printf '## Profile\n\nThe profile run failed.\n' > "$RES/profile.md"
fi

# Charts before the report is assembled, so that it links only the charts that exist;
# a step that ran and left no results has its old chart removed. A chart that cannot be
# drawn does not lose the report: the figures are all in its tables.
step "charts (docs/bench/*.svg)"
/usr/bin/python3 bench/charts.py --results "$RES" --out docs/bench --steps "$STEPS" ||
  step "charts: some could not be drawn (see above); the report is written without them"

section() { # step, heading of its section in the report
  if has "$1"; then cat "$RES/$1.md"; else /usr/bin/python3 bench/keep_section.py "$RES/previous.md" "$2"; fi
}
{
  echo "# Benchmarks"
  echo
  echo "Written by \`make bench\` (bench/run.sh$( [ -n "$quick" ] && echo ', QUICK=1')$( [ -n "${ONLY:-}" ] && echo ", ONLY=$ONLY"), RUNS=$RUNS) on $(date -u +%Y-%m-%dT%H:%MZ); do not edit by hand."
  echo "Each section names its machine state, versions, settings and exact commands."
  echo "Charts of its figures (docs/bench/*.svg, drawn by bench/charts.py) stand under each section;"
  echo "\`make bench-charts\` redraws them from bench/results without running a benchmark."
  if [ -n "${ONLY:-}" ]; then
    echo "This run reran only: $STEPS; every other section is kept from the run it names."
  fi
  echo
  BENCH_STEPS=$STEPS PREVIOUS="$RES/previous.md" /usr/bin/python3 bench/targets.py "$RES"
  echo
  section bus "## Bus"
  echo
  section http "## HTTP API"
  echo
  section devices "## Devices and MQTT"
  echo
  section connected "## Connected devices"
  echo
  section pg "## PostgreSQL"
  echo
  section profile "## Profile"
} > "$RES/report.md"
/usr/bin/python3 bench/charts.py --embed "$RES/report.md" --out docs/bench ||
  step "charts: could not link them into the report"
mv "$RES/report.md" "$OUT"
step "wrote $OUT"
