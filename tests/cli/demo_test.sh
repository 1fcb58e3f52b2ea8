#!/bin/sh
# attn demo from an empty folder: exits 0, prints its table, writes one PNG
# per variant that ran (each a real PNG: checked signature and IHDR size) and
# index.html, and says where they went. Then the same with --check-probe
# (pictures probed with one-hot v must equal the weights the plan returns).
# Usage: demo_test.sh /path/to/attn WORKDIR
set -u
ATTN=$1
WORK=$2
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
fail() { echo "FAIL: $*"; exit 1; }

"$ATTN" demo --quick >stdout.txt 2>stderr.txt
rc=$?
cat stdout.txt
[ -s stderr.txt ] && { echo "stderr:"; cat stderr.txt; }
[ "$rc" -eq 0 ] || fail "attn demo exited $rc"
grep -Eq '^sdpa +1,8,256,64 +[0-9.]+ +[0-9.]+ +exact' stdout.txt || fail "no timed sdpa row"
grep -Eq '^causal +1,8,256,64 +[0-9.]+' stdout.txt || fail "no timed causal row"
grep -q 'Wrote [0-9]* pictures' stdout.txt || fail "does not say where the pictures went"
# Sparse variants that ran must equal exact attention with a dense mask of
# their pattern (the demo builds it independently): relative error < 1e-4.
awk '$7 == "mask" { n++; if ($5 + 0 > 1e-4 || $5 == "-") { bad = bad " " $1 "=" $5 } }
     END { print n + 0 " rows checked against their masks"; if (bad != "") { print "too large:" bad; exit 1 } }' \
  stdout.txt || fail "a sparse variant differs from exact attention with its mask"
# The KV cache rows (prefill + decode one token at a time; GQA; ring) must
# equal exact causal (ring: window) attention over the whole sequence, and
# report GB/s of K/V read per decode step.
awk '$1 ~ /^kvcache/ { n++; if ($5 == "-" || $5 + 0 > 1e-5 || $4 !~ /GB\/s$/) bad = bad " " $1 "=" $5 }
     END { print n + 0 " kvcache rows"; if (n < 3 || bad != "") { print "bad:" bad; exit 1 } }' \
  stdout.txt || fail "the KV cache rows are missing or differ from exact attention"
[ -f attn-demo/index.html ] || fail "no attn-demo/index.html"

# Every variant that ran (a row with a time) has its picture.
ran=$(grep -Ec '^[a-z0-9_-]+ +1,[0-9]+,[0-9]+,[0-9]+ +[0-9]+\.[0-9]+ ' stdout.txt)
pngs=$(ls attn-demo/*.png 2>/dev/null | wc -l)
echo "$ran variants ran, $pngs pictures"
[ "$ran" -ge 12 ] || fail "only $ran variants ran (exact attention alone has 12 rows)"
[ "$pngs" -eq "$ran" ] || fail "$pngs pictures for $ran variants"
for f in attn-demo/*.png; do
  sig=$(od -An -tx1 -N8 "$f" | tr -d ' \n')
  [ "$sig" = "89504e470d0a1a0a" ] || fail "$f does not start with the PNG signature ($sig)"
  ihdr=$(od -An -c -j12 -N4 "$f" | tr -d ' \n')
  [ "$ihdr" = "IHDR" ] || fail "$f has no IHDR chunk first"
  grep -q "$f" stdout.txt || fail "$f is not listed in the output"
  grep -q "$(basename "$f")" attn-demo/index.html || fail "$f is not in index.html"
done

"$ATTN" demo --quick --check-probe --out probed >stdout2.txt 2>&1
rc=$?
[ "$rc" -eq 0 ] || { cat stdout2.txt; fail "attn demo --check-probe exited $rc"; }
grep 'probe check' stdout2.txt
n_ok=$(grep -c 'probe check: .* ok' stdout2.txt)
[ "$n_ok" -ge 12 ] || fail "only $n_ok probe checks passed"
! grep -q MISMATCH stdout2.txt || fail "probe mismatch"

# Usage errors exit 2; an output folder that cannot be made exits 3.
"$ATTN" demo --S 3 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--S 3 should be a usage error"
"$ATTN" demo --bogus >/dev/null 2>&1; [ $? -eq 2 ] || fail "--bogus should be a usage error"
: >not-a-dir
"$ATTN" demo --quick --out not-a-dir/x >/dev/null 2>&1; [ $? -eq 3 ] || fail "unwritable --out should exit 3"
echo "demo test passed"
