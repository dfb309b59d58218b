#!/usr/bin/env bash
# GPU benchmark: training images/s for densenet121 and resnet50 at 512 px (bf16, channels_last, torch.compile
# on and off) and whether the data pipeline keeps the GPU fed. Runs unattended in under 8 minutes and prints
# one table; results also land in benchmarks/results/gpu.{json,md}.
#
#   bash benchmarks/gpu.sh            # uses .venv if present, else python3 with protloc installed
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c "import protloc" 2>/dev/null; then
  # not installed: use the source tree (no network needed), install only if that is not enough
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c "import protloc.transforms, protloc.synth, protloc.models" 2>/dev/null; then
    "$PY" -m pip install --quiet -e '.[all]' || { echo "gpu.sh: cannot import protloc or install it" >&2; exit 1; }
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 470 "$PY" benchmarks/bench_gpu.py --budget 400 "$@"
