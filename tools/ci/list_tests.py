#!/usr/bin/python3
"""Print the command line of every ctest test carrying a label (default
"unit"), one per line as: workdir<TAB>env<TAB>argv0<TAB>argv1..., for
valgrind.sh. env is the test's ENVIRONMENT property as space-separated
NAME=VALUE words ("-" when it has none)."""
import json
import subprocess
import sys

build, label = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "unit")
info = json.loads(subprocess.run(["ctest", "--test-dir", build, "--show-only=json-v1"],
                                 check=True, capture_output=True, text=True).stdout)
for t in info.get("tests", []):
    props = {p["name"]: p["value"] for p in t.get("properties", [])}
    labels = props.get("LABELS", [])
    if label not in labels or props.get("DISABLED"):
        continue
    wd = props.get("WORKING_DIRECTORY", build)
    env = " ".join(props.get("ENVIRONMENT", [])) or "-"
    print("\t".join([wd, env] + t["command"]))
