#!/bin/sh
# ABI guard: build libattn.so with debug info (gcc, RelWithDebInfo), then
#  1. its exported symbols equal the names in src/attn.map (both directions);
#  2. abidiff against the committed baseline abi/attn.abi: removed or changed
#     functions/variables/symbols fail, additions pass (see abi/README.md).
#   usage: tools/ci/abi.sh            check
#          tools/ci/abi.sh --update   regenerate abi/attn.abi on purpose
. "$(dirname "$0")/lib.sh"

command -v abidw >/dev/null || ci_die "abigail-tools not installed (apt-get install abigail-tools)"
ci_build abi -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTN_BUILD_TESTS=OFF
LIB=$(find "$BUILD" -maxdepth 1 -name 'libattn.so.*.*' -type f | head -n 1)
[ -n "$LIB" ] || ci_die "libattn.so not found in $BUILD"

if [ "${1:-}" = "--update" ]; then
  abidw --headers-dir include --headers-dir "$BUILD/include" --drop-private-types \
    --no-corpus-path --no-comp-dir-path --no-show-locs --type-id-style hash \
    --out-file abi/attn.abi "$LIB"
  ci_log "wrote abi/attn.abi from $(basename "$LIB"); review 'git diff abi/' and commit it"
  exit 0
fi

ci_log "exports vs src/attn.map"
sh tests/abi/check_symbols.sh "$LIB" src/attn.map || ci_die "exports differ from src/attn.map"
ci_log "abidiff against abi/attn.abi"
sh tests/abi/check_abi.sh "$LIB" abi/attn.abi include "$BUILD/include" ||
  ci_die "ABI check failed (if the change is intended, see abi/README.md)"
ci_log "OK in $(ci_elapsed) s"
