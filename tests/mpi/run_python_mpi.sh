#!/bin/sh
# run_python_mpi.sh PYTHON BINDINGS_PYTHON_DIR BUILD_DIR MPIRUN-COMMAND...
# Runs tests/mpi/test_mpi_python.py under the given mpirun command (which
# carries its own timeout) against the build tree's libattn and libattn_mpi.
# Exits 77 (skipped) without numpy or mpi4py, or under a sanitizer build
# whose runtime cannot be preloaded.
set -eu
py=$1 bind=$2 build=$3
shift 3
if [ -n "${ATTN_TEST_SKIP_SANITIZED:-}" ]; then echo "skipped: $ATTN_TEST_SKIP_SANITIZED"; exit 77; fi
if ! "$py" -c "import numpy, mpi4py" 2>/dev/null; then
  echo "mpi_python: skipped ($py with numpy and mpi4py not available)"
  exit 77
fi
export ATTN_LIBRARY="$build/libattn.so.0" ATTN_MPI_LIBRARY="$build/libattn_mpi.so.0"
exec "$@" "$py" \
  "$(dirname "$0")/test_mpi_python.py" "$bind"
