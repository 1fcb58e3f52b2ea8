#!/bin/sh
# Run the Rust binding tests against a built libattn, offline:
#   run_rust.sh LIB_DIR BINDINGS_RUST_DIR TARGET_DIR
# Uses $CARGO or the first cargo on PATH (Debian's /usr/bin/cargo in CI, rustup's
# locally); exits 77 (skipped) when there is none.
set -eu
lib_dir=$1
src=$2
target=$3
cargo=${CARGO:-$(command -v cargo || true)}
if [ -z "$cargo" ]; then
  echo "rust_bindings: skipped (no cargo on PATH)"
  exit 77
fi
"$cargo" --version
cd "$src"
ATTN_LIB_DIR=$lib_dir LD_LIBRARY_PATH=$lib_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
  CARGO_TARGET_DIR=$target CARGO_NET_OFFLINE=true \
  "$cargo" test --offline --locked
# cargo doc renders the API (the crate-level example is a doctest run above).
ATTN_LIB_DIR=$lib_dir CARGO_TARGET_DIR=$target CARGO_NET_OFFLINE=true \
  "$cargo" doc --offline --locked --no-deps -p attn
[ -f "$target/doc/attn/index.html" ] || { echo "rust_bindings: cargo doc wrote no attn docs" >&2; exit 1; }
