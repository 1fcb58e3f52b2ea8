#!/bin/sh
# The shared library exports exactly the names listed in the version script:
# every `name;` under a `global:` in src/attn.map is defined and exported by
# libattn.so, and libattn.so exports nothing else (version nodes aside).
#   usage: check_symbols.sh LIBATTN_SO ATTN_MAP
set -eu
lib=$1
map=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Names in the map: strip comments, keep identifiers ending in ';' between
# "global:" and "local:" of each node.
sed -e 's,/\*.*\*/,,g' "$map" | awk '
  /global:/ { g = 1; sub(/.*global:/, "") }
  /local:/  { g = 0 }
  g { while (match($0, /[A-Za-z_][A-Za-z0-9_]*[ \t]*;/)) {
        s = substr($0, RSTART, RLENGTH); sub(/[ \t]*;$/, "", s); print s
        $0 = substr($0, RSTART + RLENGTH) } }' | sort -u >"$tmp/map"

# Defined dynamic symbols, without @@VERSION; the version nodes themselves
# are absolute (type A) symbols named after the nodes.
nm -D --defined-only "$lib" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' | sort -u >"$tmp/so"

status=0
if ! comm -23 "$tmp/map" "$tmp/so" | grep -q .; then :; else
  echo "in src/attn.map but not exported by $(basename "$lib"):"
  comm -23 "$tmp/map" "$tmp/so" | sed 's/^/  /'
  status=1
fi
if comm -13 "$tmp/map" "$tmp/so" | grep -q .; then
  echo "exported by $(basename "$lib") but not in src/attn.map:"
  comm -13 "$tmp/map" "$tmp/so" | sed 's/^/  /'
  status=1
fi
[ $status -eq 0 ] && echo "exports == src/attn.map: $(wc -l <"$tmp/map") symbols"
exit $status
