#!/usr/bin/env bash
# The GPU check on a machine without network: pydantic (the samplers' configs need it) from a wheel folder when it
# is missing, then benchmarks/gpu_check.py with the arguments given.
#
#   bash benchmarks/gpu_check.sh --out "$OUT/gpu_check.json"
#
# WHEELS (default .whl, git-ignored) is filled on a machine with network, for CPython 3.12 on x86_64:
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl pydantic
# PYTHON (default python) is the interpreter to use. See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
WHEELS="${WHEELS:-.whl}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$PYTHON" -c "import pydantic" >/dev/null 2>&1; then
  if ! ls "$WHEELS"/pydantic-*.whl >/dev/null 2>&1; then
    echo "gpu_check.sh: pydantic is not installed and $WHEELS/ holds no pydantic wheel (see docs/gpu.md)" >&2
    exit 2
  fi
  echo "gpu_check.sh: installing pydantic from $WHEELS/" >&2
  # an interpreter that refuses installs into its own site-packages (not root, or PEP 668 marked) still takes
  # them into a folder of ours, put on the path
  if ! "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" pydantic; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" --target "$WHEELS/site" pydantic
    export PYTHONPATH="$PYTHONPATH:$PWD/$WHEELS/site"
  fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
