#!/usr/bin/env bash
# The whole benchmark suite on one GPU, in under 5 minutes, as one prepared script.
#
#   bash benchmarks/gpu.sh                       # on the GPU machine; results under $OUT (or benchmarks/results/<today>)
#   DEVICE=cpu QUICK=1 SUITE=main OUT=/tmp/gpu-check bash benchmarks/gpu.sh   # the same script on a CPU, to check it
#
# It needs jax (with CUDA), and uses whatever anchors are installed (flax, equinox, haiku,
# torch); a missing one is reported as missing. recurrax runs from this checkout (no
# install step: the GPU machine may have no network).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # let torch and JAX share the GPU's memory
device="${DEVICE:-gpu}"
out="${OUT:-benchmarks/results/$(date +%F)}"  # the one layout: results/<YYYY-MM-DD>/<device>-<suite>[-<label>].*
quick=()
[ -n "${QUICK:-}" ] && quick=(--quick)
mkdir -p "$out"
python - <<'PY' || echo "(could not list the versions)"
import importlib, jax
print("jax", jax.__version__, jax.devices())
for lib in ["optax", "flax", "equinox", "haiku", "torch", "tqdm"]:
    try:
        m = importlib.import_module(lib); print(lib, getattr(m, "__version__", "?"))
    except Exception as e:
        print(lib, "missing:", type(e).__name__)
try:
    import torch; print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception:
    pass
PY
# impl="cudnn" against scan, before timing it
timeout 60 python benchmarks/cudnn_check.py > "$out/$device-cudnn_check.md" 2>&1 || echo "cudnn check: exit $?"
cat "$out/$device-cudnn_check.md"
# the GPU target (B=64, T=512, H=512), the main configuration, sweeps over T, B, H (in that order)
timeout 170 python -m benchmarks --suite "${SUITE:-all}" --device "$device" --reps 20 --out "$out" "${quick[@]}" || echo "benchmarks: exit $?"
# parallel-in-time scan against the sequential scan
if [ -f benchmarks/parallel.py ]; then
  timeout 60 python benchmarks/parallel.py --out "$out" "${quick[@]}" || echo "parallel: exit $?"
fi
# where the input projection belongs on this device (recurrax keeps it up front off CPU)
timeout 60 python benchmarks/ablations.py --only "input projection" --reps 10 > "$out/$device-ablations-placement.md" \
  || echo "placement: exit $?"
ls -la "$out"
