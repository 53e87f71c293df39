#!/usr/bin/env bash
# Everything to check and time on a GPU machine, in under ten minutes, results in one folder:
#   1. the tests that run on every device torch finds (CUDA included when present),
#   2. inference speed and memory from 1,536 to 1,119,744 atoms, eager and torch.compile,
#   3. training throughput, eager and the compiled step (benchmarks/gpu.py).
# Usage: bash benchmarks/gpu.sh [output folder, default benchmarks/results/gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu}"
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
timeout 240 python -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_compiled.py 2>&1 \
    | tee "$out/tests.txt" | tail -3
timeout 330 python benchmarks/gpu.py --out "$out" 2>&1 | tee "$out/gpu.log"
