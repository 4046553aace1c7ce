#!/bin/sh
# Runs every libFuzzer target in $FUZZ_BUILD/fuzz for $FUZZ_TIME seconds each, up to
# $FUZZ_JOBS at a time. Seeds come from fuzz/corpus/<name>/ (read only: what the
# fuzzer finds goes to $FUZZ_BUILD/corpus/<name>/), with fuzz/<name>.dict when there
# is one. Any crash, leak, timeout or sanitizer report fails the run; the reproducer
# is left in $FUZZ_BUILD/artifacts/ and the log in $FUZZ_BUILD/logs/.
set -eu
BUILD=${FUZZ_BUILD:-build-fuzz}
TIME=${FUZZ_TIME:-3}
JOBS=${FUZZ_JOBS:-2}
ONLY=${FUZZ_TARGETS:-}
mkdir -p "$BUILD/logs" "$BUILD/artifacts"

run_one() {
  name=$1
  bin="$BUILD/fuzz/fuzz_$name"
  mkdir -p "$BUILD/corpus/$name"
  dict=""
  [ -f "fuzz/$name.dict" ] && dict="-dict=fuzz/$name.dict"
  # -timeout: one input may not take a second (a request's worth of time);
  # -rss_limit_mb: nor grow memory without bound.
  if ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$bin" -max_total_time="$TIME" -timeout=1 -rss_limit_mb=1024 -max_len=16384 \
    -print_final_stats=1 -artifact_prefix="$BUILD/artifacts/$name-" $dict \
    "$BUILD/corpus/$name" "fuzz/corpus/$name" >"$BUILD/logs/$name.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$BUILD/logs/$name.log")
    echo "fuzz: $name ok (${runs:-?} runs)"
  else
    echo "fuzz: $name FAILED; log $BUILD/logs/$name.log:" >&2
    grep -E 'ERROR|SUMMARY|runtime error|mock lookup|Test unit written' "$BUILD/logs/$name.log" | head -20 >&2
    return 1
  fi
}

if [ "${1:-}" = "--one" ]; then
  run_one "$2"
  exit $?
fi

names=""
for f in fuzz/fuzz_*.c; do
  n=$(basename "$f" .c)
  n=${n#fuzz_}
  if [ -z "$ONLY" ] || echo " $ONLY " | grep -q " $n "; then names="$names $n"; fi
done
# xargs runs the targets in parallel and fails when any of them fails.
echo $names | tr ' ' '\n' | xargs -P "$JOBS" -I{} sh "$0" --one {}
