#!/bin/sh
# Build the libattn0 / libattn-dev .debs with CPack, install them with dpkg -i,
# build + run the pkg-config and CMake consumers against /usr (no
# PKG_CONFIG_PATH, no LD_LIBRARY_PATH), then purge the packages again.
#
# It changes the system, so it runs only as root with ATTN_TEST_DEB=1
# (.ci/run sets it); otherwise it exits 77, which CTest reports as skipped.
# Usage: deb_test.sh SOURCE_DIR [WORK_DIR]
set -eu
if [ "${ATTN_TEST_DEB:-0}" != 1 ] || [ "$(id -u)" != 0 ]; then
  echo "deb_test: skipped (needs root and ATTN_TEST_DEB=1; it installs and removes packages)"
  exit 77
fi
src=$(cd "$1" && pwd)
work=${2:-$(mktemp -d "${TMPDIR:-/tmp}/attn-deb.XXXXXX")}
mkdir -p "$work"
work=$(cd "$work" && pwd)
here=$src/tests/bindings

for p in libattn0 libattn-dev; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    echo "deb_test: $p is already installed; refusing to replace and remove it" >&2
    exit 1
  fi
done

echo "== build the packages (prefix /usr)"
rm -rf "$work/build"
cmake -S "$src" -B "$work/build" -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_TESTING=OFF -DATTN_BUILD_TESTS=OFF -DATTN_BUILD_BENCH=ON -DATTN_BUILD_EXAMPLES=OFF \
  -DATTN_BUILD_TOOLS=ON >"$work/configure.log"
cmake --build "$work/build" -j2 >"$work/build.log"
(cd "$work/build" && cpack -G DEB >"$work/cpack.log")
runtime=$(ls "$work"/build/packages/libattn0_*.deb)
dev=$(ls "$work"/build/packages/libattn-dev_*.deb)
tools=$(ls "$work"/build/packages/attn-tools_*.deb)
for d in "$runtime" "$dev" "$tools"; do
  echo "--- $(basename "$d")"
  dpkg-deb -f "$d" Package Version Depends
  dpkg-deb -c "$d" | awk '{print $6, $7, $8}'
done

cleanup() {
  dpkg --purge attn-tools libattn-dev libattn0 >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== dpkg -i"
dpkg -i "$runtime" "$dev" "$tools"
dpkg -s libattn0 libattn-dev attn-tools | grep -E '^(Package|Status|Version)'

echo "== the attn command from /usr/bin, its man page and bash completion"
/usr/bin/attn --version
for f in /usr/share/man/man1/attn.1 /usr/share/bash-completion/completions/attn \
         /usr/include/attn/attn.hpp; do
  [ -f "$f" ] || { echo "deb_test: $f not installed by the packages" >&2; exit 1; }
done
man -l /usr/share/man/man1/attn.1 >/dev/null 2>&1 || [ $? -eq 16 ] ||
  { echo "deb_test: man -l attn.1 failed" >&2; exit 1; }
bash -c '. /usr/share/bash-completion/completions/attn; COMP_WORDS=(attn d); COMP_CWORD=1;
         _attn; [ "${COMPREPLY[*]}" = demo ]' || { echo "deb_test: completion" >&2; exit 1; }
(cd "$work" && /usr/bin/attn demo --quick --out "$work/demo" >"$work/demo.log") ||
  { cat "$work/demo.log" >&2; exit 1; }
ls "$work/demo"/*.png >/dev/null
/usr/bin/attn-bench --list >/dev/null

echo "== pkg-config consumer against /usr"
unset PKG_CONFIG_PATH LD_LIBRARY_PATH || true
flags=$(pkg-config --cflags --libs attn)
echo "pkg-config --cflags --libs attn: $flags"
# shellcheck disable=SC2086
cc -std=c11 -Wall -Wextra -Werror -o "$work/consumer_pc" "$here/consumer/consumer.c" $flags -lm
ldd "$work/consumer_pc" | grep libattn
"$work/consumer_pc"

echo "== find_package(attn CONFIG) consumer against /usr"
rm -rf "$work/consumer-build"
cmake -S "$here/consumer" -B "$work/consumer-build" >"$work/consumer.log" 2>&1 ||
  { cat "$work/consumer.log" >&2; exit 1; }
cmake --build "$work/consumer-build" >>"$work/consumer.log" 2>&1 ||
  { cat "$work/consumer.log" >&2; exit 1; }
"$work/consumer-build/consumer"
"$work/consumer-build/consumer_static"
"$work/consumer-build/consumer_cpp"
"$work/consumer-build/example_cpp"

echo "== dpkg --purge"
trap - EXIT
dpkg --purge attn-tools libattn-dev libattn0
if dpkg-query -W libattn0 >/dev/null 2>&1 || dpkg-query -W attn-tools >/dev/null 2>&1 ||
   pkg-config --exists attn; then
  echo "deb_test: packages still present after dpkg --purge" >&2
  exit 1
fi
echo "deb_test: OK"
