#!/bin/sh
# Build the isolated environment the peer measurements run in (benchmarks/peers/.venv).
# Evidently is a peer we measure against, never a dependency of driftd: it lives only here,
# and benchmarks call it as a subprocess with this interpreter.
# Usage: sh benchmarks/peers/setup.sh   (idempotent; PYTHON=python3.11 to pick the interpreter)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
if [ ! -x "$here/.venv/bin/python" ]; then
    "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install --quiet --upgrade pip
"$here/.venv/bin/pip" install --quiet -r "$here/requirements.txt"
"$here/.venv/bin/python" -c "import evidently; print('evidently', evidently.__version__)"
