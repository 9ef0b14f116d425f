#!/usr/bin/env bash
# Memory-safety evidence for the native addon (issue #6), under valgrind memcheck:
#   1. the Rust unit tests (`cargo test`'s test binary), leak check and fd tracking on;
#   2. Node (--jitless, which keeps V8's generated code out of valgrind's way) running
#      scripts/memcheck-workload.cjs on a debug build of the addon, loaded through
#      NAPI_RS_NATIVE_LIBRARY_PATH so stacks have symbols.
# Builds go to CARGO_TARGET_DIR (default /tmp/fdq-valgrind-target), never to ./target.
# Exit status 1 if valgrind reports any error (invalid access, uninitialised value,
# definite leak) not covered by scripts/memcheck.supp.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/fdq-valgrind-target}"
ROUNDS="${MEMCHECK_ROUNDS:-20}"
LOGS="${CARGO_TARGET_DIR}/memcheck"
mkdir -p "$LOGS"
command -v valgrind >/dev/null || { echo 'valgrind is not installed (apt-get install valgrind)'; exit 2; }
VALGRIND=(valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,possible
  --track-fds=yes --num-callers=40 --suppressions=scripts/memcheck.supp)

echo '=== 1. cargo test under valgrind'
test_bin=$(cargo test --no-run --message-format=json 2>/dev/null |
  node -e 'let s="";process.stdin.on("data",c=>s+=c).on("end",()=>{for(const l of s.split("\n")){try{const m=JSON.parse(l);if(m.executable&&m.profile&&m.profile.test)console.log(m.executable)}catch{}}})' |
  head -n 1)
[[ -x "$test_bin" ]] || { echo "no test binary found"; exit 2; }
echo "test binary: $test_bin"
"${VALGRIND[@]}" --log-file="$LOGS/cargo-test.log" "$test_bin" --test-threads=1
grep -E 'test result|ERROR SUMMARY|definitely lost|possibly lost|FILE DESCRIPTORS' "$LOGS/cargo-test.log" || true

echo '=== 2. node --jitless fd-passing workload under valgrind (debug addon)'
cargo build --message-format=short 2>&1 | tail -n 1
cp "$CARGO_TARGET_DIR/debug/libfd_queue.so" "$CARGO_TARGET_DIR/fd-queue.debug.node"
MEMCHECK_ROUNDS="$ROUNDS" NAPI_RS_NATIVE_LIBRARY_PATH="$CARGO_TARGET_DIR/fd-queue.debug.node" \
  "${VALGRIND[@]}" --errors-for-leak-kinds=definite --log-file="$LOGS/node.log" \
  node --jitless scripts/memcheck-workload.cjs
grep -E 'ERROR SUMMARY|definitely lost|indirectly lost|FILE DESCRIPTORS' "$LOGS/node.log" || true
# every fd still open at exit must be Node's or libuv's own (or inherited), none of ours
if grep -A2 'Open file descriptor' "$LOGS/node.log" | grep -v "$LOGS/node.log" | grep -Eq 'socket:|fdq-memcheck-|fd_queue'; then
  echo 'an fd of the workload is still open at exit'
  exit 1
fi
echo "memcheck passed; logs in $LOGS"
