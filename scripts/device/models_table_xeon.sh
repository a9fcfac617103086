#!/usr/bin/env bash
# The models table (scripts/models_table.py) on the device machine's CPU, an Intel Xeon with AMX, so that the
# table has its bf16 column. The device has no package index: wheels travel in git-ignored folders named in the
# device call's `carry` (64 MiB a call), and the machine keeps /tmp between back-to-back calls.
#
#   scripts/device/models_table_xeon.sh stash           # calls 1 and 2, carrying .carry/p1, .carry/p2: to /tmp/stash
#   scripts/device/models_table_xeon.sh run MODEL ...   # later calls (call 3 carries .carry/p3): install the stash
#                                                       # into /tmp/site once, measure MODELs into
#                                                       # /tmp/stash/models_xeon.json (rows of earlier calls kept)
#                                                       # and copy it to $OUT
# Locally: copy the JSON to docs/benchmarks/ and run
#   python scripts/models_table.py --render --json docs/benchmarks/models_xeon.json
# Wheels (for the device's Python 3.12; pip download --no-deps --only-binary=:all: --python-version 3.12): openvino
# split in two (split -b 48m WHEEL WHEEL.part_), part_aa in .carry/p1; part_ab, openvino-telemetry, nncf, pydot,
# monai, nibabel, dynamic_network_architectures in .carry/p2; simpleitk, tqdm, psutil, rich (+ markdown-it-py,
# mdurl, pygments), tabulate, ninja, safetensors, einops in .carry/p3 (the working tree travels too: 64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p /tmp/stash
cp .carry/*/*.whl* /tmp/stash/ 2>/dev/null || true
if [ "${1:-}" = stash ]; then
    ls /tmp/stash
    exit 0
fi
[ "${1:-}" = run ] || { echo "usage: $0 stash | run MODEL ..." >&2; exit 2; }
shift
if [ ! -f /tmp/site/.installed ]; then
    for first in /tmp/stash/*.whl.part_aa; do  # a wheel over the carry limit travels in parts (split -b 48m)
        if [ -e "$first" ]; then cat "${first%.part_aa}".part_* > "${first%.part_aa}"; fi
    done
    python3 -m pip install -q --no-deps --target /tmp/site /tmp/stash/*.whl
    touch /tmp/site/.installed
fi
export PYTHONPATH="/tmp/site:$PWD"
python3 scripts/models_table.py --json /tmp/stash/models_xeon.json --budget-min "${BUDGET_MIN:-8}" --models "$@"
cp /tmp/stash/models_xeon.json "$OUT/"
