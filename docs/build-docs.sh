#!/bin/sh
# Build the API reference (HTML) from include/attn/*.h and the generated
# attn/version.h with doxygen; any doxygen warning fails the build.
#   docs/build-docs.sh [BUILD_DIR [OUT_DIR]]
# BUILD_DIR (default: build) must be configured (it holds include/attn/version.h);
# OUT_DIR defaults to BUILD_DIR/docs. Open OUT_DIR/html/index.html.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build}
[ -f "$build/include/attn/version.h" ] || {
  echo "build-docs: $build/include/attn/version.h missing; configure first: cmake -S $src -B $build" >&2
  exit 1; }
build=$(cd "$build" && pwd)
out=${2:-$build/docs}
mkdir -p "$out"
command -v doxygen >/dev/null || { echo "build-docs: doxygen not installed (apt-get install doxygen)" >&2; exit 1; }
version=$(sed -n 's/^#define ATTN_VERSION_STRING "\(.*\)".*/\1/p' "$build/include/attn/version.h")
log=$out/doxygen-warnings.log
ATTN_DOC_SRC=$src ATTN_DOC_GEN=$build/include ATTN_DOC_OUT=$out ATTN_DOC_VERSION=$version \
  doxygen "$src/docs/Doxyfile" 2>"$log" || { cat "$log" >&2; echo "build-docs: doxygen failed" >&2; exit 1; }
if [ -s "$log" ]; then
  cat "$log" >&2
  echo "build-docs: doxygen warnings (treated as errors)" >&2
  exit 1
fi
echo "build-docs: $out/html/index.html"
