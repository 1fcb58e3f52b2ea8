#!/bin/sh
# --help on every subcommand (exit 0, documents the exit codes), --version
# (attn and libattn versions), usage errors exit 2.
# Usage: cli_basics.sh /path/to/attn EXPECTED_VERSION
set -u
ATTN=$1
VERSION=$2
fail() { echo "FAIL: $*"; exit 1; }
for cmd in "" demo bench run; do
  out=$("$ATTN" $cmd --help) || fail "attn $cmd --help exited $?"
  echo "$out" | grep -q "^Usage: attn" || fail "attn $cmd --help has no usage line"
  echo "$out" | grep -q "3  I/O error or bad file" || fail "attn $cmd --help lacks the exit code table"
done
"$ATTN" -h >/dev/null || fail "attn -h"
v=$("$ATTN" --version) || fail "--version exited $?"
echo "$v"
echo "$v" | grep -q "^attn $VERSION" || fail "--version does not print attn $VERSION"
echo "$v" | grep -q "libattn $VERSION (run time), headers $VERSION" || fail "--version lacks the library version"
"$ATTN" >/dev/null 2>&1; [ $? -eq 2 ] || fail "no command should exit 2"
"$ATTN" frobnicate >/dev/null 2>&1; [ $? -eq 2 ] || fail "unknown command should exit 2"
"$ATTN" --threads 0 demo >/dev/null 2>&1; [ $? -eq 2 ] || fail "--threads 0 should exit 2"
"$ATTN" --threads >/dev/null 2>&1; [ $? -eq 2 ] || fail "--threads without value should exit 2"
"$ATTN" --bogus >/dev/null 2>&1; [ $? -eq 2 ] || fail "unknown global option should exit 2"
"$ATTN" bench --bogus >/dev/null 2>&1; [ $? -eq 2 ] || fail "bench --bogus should exit 2"
ATTN_BENCH=/nonexistent/attn-bench "$ATTN" bench --quick --out /tmp/x >/dev/null 2>&1
[ $? -eq 3 ] || fail "a missing attn-bench should exit 3"
echo "cli basics passed"
