#!/usr/bin/env bash
# The GPU checks in one go, for a machine with a CUDA device and a python3 that holds a CUDA
# torch (no install: the package is pure Python and is taken from this checkout):
#   1. the CUDA tests (pytest -m cuda; modules whose optional imports are missing there, such as
#      casadi or dask, are reported as collection errors and the rest still run);
#   2. benchmarks/bench_device.py: batched Hessians for N = 1e4..1e7 and multistart from 1e4
#      starts, on the CPU and on the GPU, written to benchmarks/RESULTS.md.
# Logs and RESULTS.md are copied to $OUT (default: benchmarks/gpu_out). Run from anywhere:
#   bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt"
python3 - <<'PY' 2>&1 | tee "$out/versions.txt"
import numpy, scipy, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print("numpy", numpy.__version__, "scipy", scipy.__version__)
PY
# a newer or older torch may deprecate what ours does not: such warnings are shown, not errors
python3 -m pytest tests -m cuda -rs -W ignore::DeprecationWarning -p no:cacheprovider \
    --continue-on-collection-errors 2>&1 | tee "$out/cuda_tests.log"
tests=$?
python3 benchmarks/bench_device.py "$@" 2>&1 | tee "$out/bench_device.log"
bench=$?
cp benchmarks/RESULTS.md "$out/RESULTS.md"
echo "cuda tests exit $tests, bench_device exit $bench" | tee -a "$out/bench_device.log"
exit $((tests || bench))
