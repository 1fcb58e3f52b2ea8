#!/bin/sh
# Install the build tree into a temporary prefix and build + run two tiny
# consumers against it: one with `pkg-config --cflags --libs attn`, one CMake
# project with find_package(attn CONFIG REQUIRED) (shared and static targets);
# each also builds the C++17 consumer of attn/attn.hpp and the C++ example
# with -std=c++17 -Wall -Wextra -Werror.
# Usage: consumer_test.sh BUILD_DIR [CC]
set -eu
build=$(cd "$1" && pwd)
cc=${2:-${CC:-cc}}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/attn-consumer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

cmake --install "$build" --prefix "$prefix" >"$tmp/install.log"
libdir=$(dirname "$(find "$prefix" -name attn.pc)")/..
libdir=$(cd "$libdir" && pwd)
for f in "$prefix/include/attn/attn.h" "$prefix/include/attn/version.h" "$libdir/libattn.a" \
         "$libdir/cmake/attn/attnConfig.cmake" "$libdir/cmake/attn/attnConfigVersion.cmake" \
         "$libdir/cmake/attn/attnTargets.cmake"; do
  [ -f "$f" ] || { echo "consumer_test: missing $f after install" >&2; exit 1; }
done
# libattn.so -> libattn.so.0 -> libattn.so.0.x.y
[ -L "$libdir/libattn.so" ] && [ -L "$libdir/libattn.so.0" ] || {
  echo "consumer_test: libattn.so / libattn.so.0 links missing in $libdir" >&2; exit 1; }
real=$(readlink -f "$libdir/libattn.so")
case $(basename "$real") in libattn.so.0.*) ;; *)
  echo "consumer_test: libattn.so resolves to $real, expected libattn.so.0.x.y" >&2; exit 1;; esac
grep -q "^prefix=$prefix\$" "$libdir/pkgconfig/attn.pc" || {
  echo "consumer_test: attn.pc does not carry the install prefix $prefix:" >&2
  cat "$libdir/pkgconfig/attn.pc" >&2; exit 1; }

echo "== pkg-config consumer"
flags=$(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --cflags --libs attn)
echo "pkg-config --cflags --libs attn: $flags"
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror -o "$tmp/consumer_pc" "$here/consumer/consumer.c" $flags -lm
LD_LIBRARY_PATH="$libdir" "$tmp/consumer_pc"

echo "== pkg-config C++17 consumer (attn/attn.hpp) and the C++ example"
cxx=${CXX:-c++}
for f in "$prefix/include/attn/attn.hpp"; do
  [ -f "$f" ] || { echo "consumer_test: missing $f after install" >&2; exit 1; }
done
# shellcheck disable=SC2086
"$cxx" -std=c++17 -Wall -Wextra -Werror -o "$tmp/consumer_cpp_pc" "$here/consumer/consumer.cpp" $flags
LD_LIBRARY_PATH="$libdir" "$tmp/consumer_cpp_pc"
# shellcheck disable=SC2086
"$cxx" -std=c++17 -Wall -Wextra -Werror -o "$tmp/example_cpp_pc" \
  "$here/../../examples/cpp/causal_attention.cpp" $flags
LD_LIBRARY_PATH="$libdir" "$tmp/example_cpp_pc"

# Without exceptions only the result<T> forms exist; they must compile alone.
cat >"$tmp/noexc.cpp" <<'EOF2'
#include <attn/attn.hpp>
int main() {
  auto ctx = attn::context::make(1);
  if (!ctx) return 1;
  const std::vector<std::int64_t> lengths{1};
  auto d = attn::desc::make(ctx.value());
  if (!d || !d.value().try_key_lengths(lengths)) return 1;
  return d.value().try_window(-1, 0).error().status == ATTN_ERR_INVALID_ARG ? 0 : 1;
}
EOF2
# shellcheck disable=SC2086
"$cxx" -std=c++17 -fno-exceptions -Wall -Wextra -Werror -o "$tmp/noexc" "$tmp/noexc.cpp" $flags
LD_LIBRARY_PATH="$libdir" "$tmp/noexc"

echo "== find_package(attn CONFIG) consumer"
CC="$cc" cmake -S "$here/consumer" -B "$tmp/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release >"$tmp/cmake.log" 2>&1 || { cat "$tmp/cmake.log" >&2; exit 1; }
cmake --build "$tmp/cmake-build" >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; exit 1; }
"$tmp/cmake-build/consumer"   # the imported target carries the rpath to $libdir
"$tmp/cmake-build/consumer_static"
"$tmp/cmake-build/consumer_cpp"
"$tmp/cmake-build/example_cpp"
echo "consumer_test: OK"
