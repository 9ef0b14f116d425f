#!/usr/bin/env bash
# The test suite on a busy machine: runs `ava` RUNS times in a row (default 5) while a
# second copy of the whole suite runs alongside in a loop, prints each run's result with
# the names of its failing tests, and exits non-zero if any of the RUNS failed.
#
#   bash scripts/load-test.sh [RUNS] [ava arguments...]      e.g. 3 __test__/faults.spec.ts
#   npm run test:load -- [RUNS] [ava arguments...]
#
# Both copies run in this checkout, which is safe: the suite puts its sockets and files in
# fresh mkdtemp directories and binds TCP/UDP to port 0; what the copies share is made for
# it (tsx's compile cache in the temp directory is keyed by content hash, and a half-written
# entry fails to parse and is compiled again; ava writes node_modules/.cache/ava
# atomically and only orders files by it). Logs stay in the directory printed at the end.
# FDQ_TIME_SCALE, if set, reaches both copies (see __test__/helpers.ts).
set -u
cd "$(dirname "$0")/.." || exit 2

RUNS=${1:-5}
shift || true
case $RUNS in
  '' | *[!0-9]*)
    echo "usage: $0 [RUNS] [ava arguments...]" >&2
    exit 2
    ;;
esac
for built in binding.js index.js; do
  [ -e "$built" ] || {
    echo "$built is missing: build first (npm install, or npm run build)" >&2
    exit 2
  }
done

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/fdq-load-XXXXXX")
AVA=(node_modules/.bin/ava "$@")
BACKGROUND_AVA=(node_modules/.bin/ava)
export FORCE_COLOR=0

# ava's closing counts: "N tests passed", "N test failed", "N test remained pending after a
# timeout", "N uncaught exception", ...
summary() {
  grep -E '^ +[0-9]+ (tests?|known failures?|uncaught exceptions?|unhandled rejections?|test files?) ' "$1" |
    grep -v 'were pending in' | sed -E 's/^ +//' | paste -sd ',' - | sed 's/,/, /g'
}

# What failed, as ava names it: failed tests, timeouts with the tests left pending (and
# their files), crashed files, uncaught exceptions. One per line.
failures() {
  grep -E '✘|were pending in|◌|Uncaught exception in|Unhandled rejection in|exited with a non-zero' "$1" |
    sed -E 's/^ +//' | awk '!seen[$0]++'
}

# The second copy: the whole suite, again and again, in its own process group so that it
# can be stopped as a whole (ava, its workers and their children).
set -m
(
  n=0
  while :; do
    n=$((n + 1))
    start=$SECONDS
    "${BACKGROUND_AVA[@]}" > "$LOGS/background-$n.log" 2>&1
    echo "$n $? $((SECONDS - start))" >> "$LOGS/background.status"
  done
) &
BACKGROUND=$!
set +m
stop_background() {
  if [ -n "${BACKGROUND:-}" ]; then
    kill -TERM -- "-$BACKGROUND" 2> /dev/null
    wait "$BACKGROUND" 2> /dev/null
    BACKGROUND=
  fi
}
trap 'stop_background; exit 130' INT TERM
trap stop_background EXIT

echo "load test: $RUNS runs of 'ava${*:+ $*}' while a second copy of the suite runs alongside ($(nproc) cores, FDQ_TIME_SCALE=${FDQ_TIME_SCALE:-1}); logs in $LOGS"
failed=0
total_start=$SECONDS
for i in $(seq 1 "$RUNS"); do
  start=$SECONDS
  "${AVA[@]}" > "$LOGS/run-$i.log" 2>&1
  status=$?
  took=$((SECONDS - start))
  load=$(cut -d' ' -f1 /proc/loadavg)
  if [ "$status" -eq 0 ]; then
    echo "run $i/$RUNS: PASS in ${took}s (load $load): $(summary "$LOGS/run-$i.log")"
  else
    failed=$((failed + 1))
    echo "run $i/$RUNS: FAIL (exit $status) in ${took}s (load $load): $(summary "$LOGS/run-$i.log")"
    failures "$LOGS/run-$i.log" | sed 's/^/    /'
  fi
done
stop_background

echo "background copy alongside:"
if [ -s "$LOGS/background.status" ]; then
  while read -r n status took; do
    if [ "$status" -eq 0 ]; then
      echo "  run $n: pass in ${took}s: $(summary "$LOGS/background-$n.log")"
    else
      echo "  run $n: FAIL (exit $status) in ${took}s: $(summary "$LOGS/background-$n.log")"
      failures "$LOGS/background-$n.log" | sed 's/^/      /'
    fi
  done < "$LOGS/background.status"
fi
echo "  (plus one run stopped unfinished when the last foreground run ended)"

echo "load test: $((RUNS - failed))/$RUNS runs passed in $((SECONDS - total_start))s; logs in $LOGS"
[ "$failed" -eq 0 ]
