#!/bin/sh
# Run the Go binding tests against a build tree:
#   run_go.sh PKG_CONFIG_DIR LIB_DIR BINDINGS_GO_DIR WORK_DIR
# PKG_CONFIG_DIR holds attn-uninstalled.pc (build-tree flags for #cgo pkg-config).
# GOPATH/GOCACHE go to WORK_DIR, GOPROXY=off (no dependencies). GODEBUG=cgocheck=2
# makes the runtime check cgo's pointer rules on every call.
# Exits 77 (skipped) when there is no go on PATH.
set -eu
pc_dir=$1
lib_dir=$2
src=$3
work=$4
go=${GO:-$(command -v go || true)}
if [ -z "$go" ]; then
  echo "go_bindings: skipped (no go on PATH)"
  exit 77
fi
"$go" version
mkdir -p "$work"
export GOPATH="$work/gopath" GOCACHE="$work/gocache" GOPROXY=off GOFLAGS= GO111MODULE=on
export PKG_CONFIG_PATH="$pc_dir" LD_LIBRARY_PATH="$lib_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GODEBUG=cgocheck=2
cd "$src"
"$go" vet ./...
# go doc renders the package with its example (example_test.go, run by go test).
"$go" doc -all . >"$work/godoc.txt"
grep -q "func Attention" "$work/godoc.txt" || { echo "go doc: no Attention" >&2; exit 1; }
exec "$go" test -count=1 -v ./...
