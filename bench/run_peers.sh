#!/usr/bin/env bash
# Compare streamflow with Bytewax and a plain Python loop on the canonical payment
# workload (W1, W2, W3), side by side in one run. One command from a fresh clone:
#
#     bash bench/run_peers.sh                 # 1,000,000 events, median of 3 (~15-20 min on 2 cores)
#     bash bench/run_peers.sh --n 200000 --reps 1
#
# It creates bench/.venv (git-ignored) with streamflow installed editable and
# bytewax==0.21.1 (a bench-only peer, never a dependency of streamflow), then runs
# bench/peers.py with every argument passed through. Pathway is measured when it is
# importable: `bench/.venv/bin/pip install pathway==0.33.0` first.
# PYTHON picks the interpreter that creates the venv (default: python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import streamflow, bytewax" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e "$repo" "bytewax==0.21.1"
fi

cd "$repo"
exec "$venv/bin/python" "$here/peers.py" "$@"
