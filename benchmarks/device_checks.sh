#!/usr/bin/env bash
# The accelerator checks, as one script (a lent machine's time is scarce): the Pallas kernel
# benchmark compiled for the device, then the ~1B train-step MFU. Writes their markdown
# fragments and logs to $OUT (default: benchmarks/results/device). Expects jax with the
# device's plugin installed; ml_collections may come as a wheel in .whl/ (no network there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
(nvidia-smi -L; python3 -c "import jax; print(jax.__version__, jax.devices())") 2>&1 | tee "$OUT/devices.log"
timeout "${KERNEL_TIMEOUT_S:-300}" python3 benchmarks/bench_kernels.py --iters 10 \
  --out "$OUT/kernels_device.md" 2>&1 | tee "$OUT/kernels.log"
timeout "${TRAIN_TIMEOUT_S:-200}" python3 benchmarks/bench_train_step_device.py --steps 10 \
  --out "$OUT/train_step_device.md" 2>&1 | tee "$OUT/train_step.log"
