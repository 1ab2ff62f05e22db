#!/usr/bin/env bash
# scripts.bench_device on a GPU machine, in one call (docs/gpu.md, "Benchmark on a GPU
# machine"). That machine has no network and an image with its own Python and CUDA torch:
# this script builds and fetches nothing. It installs the wheels that
# `python -m scripts.gpu_wheelhouse` put in wheelhouse/ here, then the project and crypten
# without their declared dependencies (as make setup does crypten), runs the bench on the
# GPU and copies its JSON, its log and the GPU's facts to $OUT.
# Arguments go to scripts.bench_device after the defaults below (a later one wins).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-outputs/gpu_bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FLWR_DISABLE_UPDATE_CHECK=1 WANDB_MODE=disabled
if [ ! -f wheelhouse/requirements.txt ]; then
  echo "wheelhouse/requirements.txt is missing: run python -m scripts.gpu_wheelhouse first" >&2
  exit 2
fi
# --no-deps: wheelhouse/ holds the closure less what the image has (scripts/gpu_wheelhouse.py);
# pip check below names any version of the image that the pins disagree with.
pip_install=("$PY" -m pip install -q --no-index --no-cache-dir --find-links wheelhouse --no-deps)
"${pip_install[@]}" -r wheelhouse/requirements.txt
"${pip_install[@]}" crypten==0.4.1
"${pip_install[@]}" --no-build-isolation -e .
"$PY" -m pip check >"$OUT/pip_check.txt" 2>&1 || echo "pip check: see $OUT/pip_check.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/nvidia_smi.csv" || true
export PRIMIA_DATA="$PWD/wheelhouse/data/pneumoniamnist.npz"
federated=()
if ! "$PY" -c "import ray" 2>/dev/null; then
  echo "Ray is not in wheelhouse/ (python -m scripts.gpu_wheelhouse --with-ray): no federated rounds"
  federated=(--skip-federated)
fi
"$PY" -m scripts.bench_device --device cuda --batch "${BATCH:-64}" --steps "${STEPS:-20}" \
  --warmup "${WARMUP:-5}" --out outputs/bench_device "${federated[@]}" "$@" 2>&1 \
  | tee "$OUT/bench_device.log"
cp outputs/bench_device/bench_device.json "$OUT/"
