#!/bin/sh
# Run the Python binding tests: run_python.sh PYTHON BINDINGS_PYTHON_DIR
# Exits 77 (skipped) when PYTHON or numpy is missing.
set -eu
py=$1
dir=$2
if ! [ -x "$py" ] || ! "$py" -c "import numpy" 2>/dev/null; then
  echo "python_bindings: skipped ($py with numpy not available)"
  exit 77
fi
exec "$py" -m unittest discover -v -s "$dir/tests" -t "$dir/tests"
