#!/usr/bin/env bash
# GPU benchmark: `protloc train --recipe gpu` end to end at 512 px (and one epoch over 31,000 fields), the
# models' own ceilings (bf16, channels_last, torch.compile on and off) and the data pipeline alone. Runs
# unattended in under 8 minutes, printing each row as it is measured; results land in
# benchmarks/results/gpu.{json,md} (or $PROTLOC_BENCH_RESULTS), rewritten after every row.
#
#   bash benchmarks/gpu.sh            # uses .venv if present, else python3 with protloc installed
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c "import protloc" 2>/dev/null; then
  # not installed: use the source tree (no network needed), install only if that is not enough
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c "import protloc.data.transforms, protloc.synth, protloc.model.network" 2>/dev/null; then
    "$PY" -m pip install --quiet -e '.[all]' || { echo "gpu.sh: cannot import protloc or install it" >&2; exit 1; }
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec timeout 470 "$PY" benchmarks/bench_gpu.py --budget 400 "$@"
