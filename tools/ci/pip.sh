#!/bin/sh
# The Python package as users install it: build + install libattn into a
# staging prefix, make a fresh venv (--system-site-packages: Debian's numpy and
# torch), `pip install --no-build-isolation ./bindings/python`, then from
# outside the source tree
#  1. the Python test suite (bindings/python/tests) against the *installed*
#     package (ATTN_TEST_INSTALLED=1: the tests do not add the source tree to
#     sys.path), libattn found through pkg-config (PKG_CONFIG_PATH -> prefix);
#  2. the torch one-liner: attention on torch tensors returns a torch tensor
#     equal to numpy's result, and an out= tensor keeps its data pointer;
#  3. a second venv with the library bundled into the package
#     (ATTN_BUNDLE_LIBRARY), imported with no environment pointing at libattn.
. "$(dirname "$0")/lib.sh"

PY=${ATTN_PYTHON:-/usr/bin/python3}
"$PY" -c "import venv, numpy, setuptools" 2>/dev/null ||
  ci_die "$PY needs python3-venv, python3-numpy and python3-setuptools"
ci_build pip -DCMAKE_BUILD_TYPE=Release -DATTN_BUILD_TESTS=OFF -DATTN_BUILD_EXAMPLES=OFF \
  -DATTN_BUILD_TOOLS=OFF
STAGE=$BUILD/stage
rm -rf "$STAGE"
cmake --install "$BUILD" --prefix "$STAGE" >/dev/null
PC_DIR=$(dirname "$(find "$STAGE" -name attn.pc | head -n 1)")
LIBDIR=$(cd "$PC_DIR/.." && pwd)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/attn-pip.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
unset ATTN_LIBRARY ATTN_BUILD_DIR PYTHONPATH LD_LIBRARY_PATH || true

ci_log "venv + pip install ./bindings/python (libattn from $STAGE)"
"$PY" -m venv --system-site-packages "$WORK/venv"
VPY=$WORK/venv/bin/python
PKG_CONFIG_PATH=$PC_DIR "$VPY" -m pip install --no-build-isolation --no-index \
  ./bindings/python >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; ci_die "pip install"; }
rm -rf bindings/python/build bindings/python/attn.egg-info

cd "$WORK"   # outside the source tree from here on
export PKG_CONFIG_PATH="$PC_DIR"
"$VPY" - "$WORK/venv" "$LIBDIR" <<'PYEOF' || ci_die "the installed package is not the one imported"
import os, sys, attn
venv, libdir = sys.argv[1], sys.argv[2]
assert os.path.realpath(attn.__file__).startswith(os.path.realpath(venv)), attn.__file__
assert os.path.realpath(attn.library_path()).startswith(os.path.realpath(libdir)), attn.library_path()
print("attn %s from %s, libattn %s" % (attn.__version__, attn.__file__, attn.library_path()))
PYEOF

ci_log "Python tests against the installed package"
ATTN_TEST_INSTALLED=1 ATTN_NUM_THREADS=2 "$VPY" -m unittest discover \
  -s "$ATTN_ROOT/bindings/python/tests" -t "$ATTN_ROOT/bindings/python/tests" ||
  ci_die "Python tests against the installed package"

ci_log "torch one-liner"
"$VPY" -c '
import attn, numpy as np, torch
q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
o = attn.attention(q, k, v, causal=True)
assert isinstance(o, torch.Tensor), type(o)
assert np.array_equal(o.numpy(), attn.attention(q.numpy(), k.numpy(), v.numpy(), causal=True))
out = torch.empty(2, 4, 16, 8); p = out.data_ptr()
r = attn.attention(q, k, v, causal=True, out=out)
assert r is out and r.data_ptr() == p and torch.equal(out, o)
print("torch one-liner: OK (same data pointer for out=)")' || ci_die "torch one-liner"

ci_log "bundled library (ATTN_BUNDLE_LIBRARY), no PKG_CONFIG_PATH"
unset PKG_CONFIG_PATH
"$PY" -m venv --system-site-packages "$WORK/venv2"
(cd "$ATTN_ROOT" && ATTN_BUNDLE_LIBRARY="$LIBDIR/libattn.so.0" "$WORK/venv2/bin/python" -m pip \
  install --no-build-isolation --no-index ./bindings/python >"$WORK/pip2.log" 2>&1) ||
  { cat "$WORK/pip2.log" >&2; ci_die "pip install (bundled)"; }
rm -rf "$ATTN_ROOT/bindings/python/build" "$ATTN_ROOT/bindings/python/attn.egg-info"
"$WORK/venv2/bin/python" -c '
import os, attn, numpy as np
here = os.path.dirname(attn.__file__)
assert attn.library_path() == os.path.join(here, "_libs", "libattn.so.0"), attn.library_path()
q = np.ones((1, 1, 2, 2), np.float32)
assert np.allclose(attn.attention(q, q, q), 1.0)
print("bundled:", attn.library_path())' || ci_die "bundled library"
ci_log "OK in $(ci_elapsed) s"
