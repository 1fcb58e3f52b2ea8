#!/bin/sh
# Compare libattn.so with the committed ABI baseline abi/attn.abi (abidw
# XML of the public types only). While the 0.x API grows, ADDED functions
# and variables pass; anything removed or changed fails, as does an
# incompatible change. See abi/README.md to update the baseline on purpose.
#   usage: check_abi.sh LIBATTN_SO BASELINE PUBLIC_HEADER_DIR...
set -eu
lib=$1
base=$2
shift 2
hd=
for d in "$@"; do hd="$hd --hd2 $d"; done
command -v abidiff >/dev/null || { echo "abidiff not found (apt-get install abigail-tools)"; exit 1; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
# The experimental API is exempt (abi/experimental.supp beside the baseline).
supp=
[ -f "$(dirname "$base")/experimental.supp" ] && supp="--suppressions $(dirname "$base")/experimental.supp"
# shellcheck disable=SC2086 # $hd and $supp are lists of options
abidiff --drop-private-types --fail-no-debug-info $supp $hd "$base" "$lib" >"$out" 2>&1
rc=$?
set -e
cat "$out"
# abidiff's exit status is a bit set: 1 error, 2 usage error, 4 ABI change,
# 8 incompatible ABI change (removed symbol, changed size/offset...).
if [ $((rc & 3)) -ne 0 ]; then
  echo "FAIL: abidiff could not compare (exit $rc)"
  exit 1
fi
if [ $((rc & 8)) -ne 0 ]; then
  echo "FAIL: incompatible ABI change against $(basename "$base") (exit $rc)"
  exit 1
fi
if [ $((rc & 4)) -ne 0 ]; then
  # A change: acceptable only if every count of removed or changed
  # functions, variables and symbols is zero, i.e. it is all additions.
  bad=$(grep -E 'changes summary:' "$out" | grep -E '[1-9][0-9]* (Removed|Changed)' || true)
  if [ -n "$bad" ]; then
    echo "FAIL: removed or changed interfaces against $(basename "$base"):"
    echo "$bad"
    exit 1
  fi
  echo "OK: only additions against $(basename "$base") (update the baseline when releasing)"
  exit 0
fi
echo "OK: ABI identical to $(basename "$base")"
