#!/bin/sh
# Every hand-made broken .npz in bad_npz/ (see make_bad_npz.py and EXPECT)
# must give the expected exit status (3: bad file), a message naming the file
# and saying what is wrong, no crash (status > 128 means a signal) and no
# output file. The good archives (stored and deflated) must work, as .npz
# outputs must.
# Usage: bad_npz_test.sh /path/to/attn /path/to/tests/cli WORKDIR
set -u
ATTN=$1
CLI=$2
WORK=$3
DIR=$CLI/bad_npz
GOOD=$CLI/bad_npy/good_q.npy
rm -rf "$WORK" && mkdir -p "$WORK" || exit 1
fails=0
count=0

check() { # name expected_status substring -- attn args...
  name=$1 want=$2 sub=$3
  shift 3
  rm -f "$WORK/out.npy" "$WORK/out.npz"
  "$@" >"$WORK/stdout" 2>"$WORK/stderr"
  got=$?
  count=$((count + 1))
  msg=$(cat "$WORK/stderr")
  if [ "$got" -ne "$want" ]; then
    echo "FAIL $name: exit status $got, expected $want; stderr: $msg"
    fails=$((fails + 1))
  elif [ -n "$sub" ] && ! grep -qF -- "$sub" "$WORK/stderr"; then
    echo "FAIL $name: message lacks '$sub': $msg"
    fails=$((fails + 1))
  elif [ "$want" -ne 0 ] && { [ -e "$WORK/out.npy" ] || [ -e "$WORK/out.npz" ]; }; then
    echo "FAIL $name: an output file was written despite the error"
    fails=$((fails + 1))
  else
    echo "ok   $name (exit $got): $msg"
  fi
}

while IFS="$(printf '\t')" read -r file status sub; do
  case "$file" in '#'* | '') continue ;; esac
  check "$file as q" "$status" "$sub" "$ATTN" run --q "$DIR/$file" --k "$GOOD" --v "$GOOD" -o "$WORK/out.npy"
  check "$file as q (names the file)" "$status" "$file" "$ATTN" run --q "$DIR/$file" --k "$GOOD" --v "$GOOD" -o "$WORK/out.npz"
  check "$file as v" "$status" "--v" "$ATTN" run --q "$GOOD" --k "$GOOD" --v "$DIR/$file:q" -o "$WORK/out.npy"
  check "$file as bool mask" "$status" "--bool-mask" "$ATTN" run --q "$GOOD" --k "$GOOD" --v "$GOOD" --bool-mask "$DIR/$file:q" -o "$WORK/out.npy"
done <"$DIR/EXPECT"

# The good archives work, stored and deflated, bare or with :NAME.
check "good stored" 0 "" "$ATTN" run --q "$DIR/good_q.npz" --k "$GOOD" --v "$GOOD" -o "$WORK/out.npz"
check "good deflated" 0 "" "$ATTN" run --q "$DIR/good_q_deflated.npz:q" --k "$DIR/good_q.npz:q.npy" --v "$GOOD" -o "$WORK/out.npy"
# Usage and I/O errors around archives.
check "missing archive" 3 "cannot open" "$ATTN" run --q "$WORK/none.npz" --k "$GOOD" --v "$GOOD" -o "$WORK/out.npy"
check "--in needs an .npz" 2 "--in" "$ATTN" run --in "$GOOD" -o "$WORK/out.npy"
check "--in without q" 3 "no member 'q'" "$ATTN" run --in "$DIR/two_members_no_q.npz" -o "$WORK/out.npy"
check "member not there" 3 "no member 'x'" "$ATTN" run --q "$DIR/good_q.npz:x" --k "$GOOD" --v "$GOOD" -o "$WORK/out.npy"
check "unwritable .npz output" 3 "cannot create" "$ATTN" run --q "$GOOD" --k "$GOOD" --v "$GOOD" -o "$WORK/no/such/dir/out.npz"

echo "$count checks, $fails failed"
[ "$fails" -eq 0 ]
