#!/bin/sh
# Every hand-made broken .npy in bad_npy/ (see make_bad_npy.py and EXPECT)
# must give the expected exit status (3 for bad files, 1 for the library's
# shape complaint), a message naming the file and saying what is wrong, no
# crash (status > 128 means a signal) and no output file.
# Usage: bad_npy_test.sh /path/to/attn /path/to/tests/cli/bad_npy WORKDIR
set -u
ATTN=$1
DIR=$2
WORK=$3
rm -rf "$WORK" && mkdir -p "$WORK" || exit 1
GOOD="$DIR/good_q.npy"
fails=0
count=0

check() { # name expected_status substring -- attn args...
  name=$1 want=$2 sub=$3
  shift 3
  rm -f "$WORK/out.npy"
  "$@" >"$WORK/stdout" 2>"$WORK/stderr"
  got=$?
  count=$((count + 1))
  msg=$(cat "$WORK/stderr")
  if [ "$got" -ne "$want" ]; then
    echo "FAIL $name: exit status $got, expected $want; stderr: $msg"
    fails=$((fails + 1))
  elif ! grep -qF -- "$sub" "$WORK/stderr"; then
    echo "FAIL $name: message lacks '$sub': $msg"
    fails=$((fails + 1))
  elif [ -e "$WORK/out.npy" ]; then
    echo "FAIL $name: an output file was written despite the error"
    fails=$((fails + 1))
  else
    echo "ok   $name (exit $got): $msg"
  fi
}

# Each bad file as q, as k and as v.
while IFS="$(printf '\t')" read -r file status sub; do
  case "$file" in '#'* | '') continue ;; esac
  check "$file as q" "$status" "$sub" "$ATTN" run --variant exact --q "$DIR/$file" --k "$GOOD" --v "$GOOD" -o "$WORK/out.npy"
  if [ "$status" -eq 3 ]; then
    check "$file as k" 3 "$file" "$ATTN" run --q "$GOOD" --k "$DIR/$file" --v "$GOOD" -o "$WORK/out.npy"
    check "$file as v" 3 "--v" "$ATTN" run --q "$GOOD" --k "$GOOD" --v "$DIR/$file" -o "$WORK/out.npy"
  fi
done <"$DIR/EXPECT"

# Files that are not there, or not files.
check "missing file" 3 "cannot open" "$ATTN" run --q "$DIR/no-such-file.npy" --k "$GOOD" --v "$GOOD" -o "$WORK/out.npy"
check "directory" 3 "not a regular file" "$ATTN" run --q "$DIR" --k "$GOOD" --v "$GOOD" -o "$WORK/out.npy"
# A bad mask / layout file is a bad file too.
check "bad bool mask" 3 "--bool-mask" "$ATTN" run --q "$GOOD" --k "$GOOD" --v "$GOOD" --bool-mask "$DIR/truncated_data.npy" -o "$WORK/out.npy"
check "float data as bool mask" 3 "expected bool or uint8" "$ATTN" run --q "$GOOD" --k "$GOOD" --v "$GOOD" --bool-mask "$GOOD" -o "$WORK/out.npy"
# Usage errors exit 2.
check "no --q" 2 "--q is required" "$ATTN" run --k "$GOOD" --v "$GOOD" -o "$WORK/out.npy"
check "unknown variant" 2 "unknown 'nope'" "$ATTN" run --variant nope --q "$GOOD" --k "$GOOD" --v "$GOOD" -o "$WORK/out.npy"
check "unknown option" 2 "unknown option" "$ATTN" run --frobnicate --q "$GOOD" --k "$GOOD" --v "$GOOD" -o "$WORK/out.npy"
check "bad --window" 2 "--window" "$ATTN" run --q "$GOOD" --k "$GOOD" --v "$GOOD" --window 3 x -o "$WORK/out.npy"
# Library errors exit 1 with the library's message passed through.
check "alibi count" 1 "slopes" "$ATTN" run --q "$GOOD" --k "$GOOD" --v "$GOOD" --alibi 0.5,0.25,0.125 -o "$WORK/out.npy"
check "key lengths out of range" 1 "lengths" "$ATTN" run --q "$GOOD" --k "$GOOD" --v "$GOOD" --key-lengths 99 -o "$WORK/out.npy"
# An output path that cannot be written.
check "unwritable output" 3 "cannot create" "$ATTN" run --q "$GOOD" --k "$GOOD" --v "$GOOD" -o "$WORK/no/such/dir/out.npy"

echo "$count checks, $fails failed"
[ "$fails" -eq 0 ]
