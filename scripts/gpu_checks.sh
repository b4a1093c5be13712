#!/usr/bin/env bash
# The GPU checks of issue 8, in one run for a lent device (`run` tool: about 10 minutes of device time):
#   1. the gpu-marked tests (bf16 fast path; no host-device sync inside the step, CUDA's sync detector);
#   2. Soft-IntroVAE CIFAR-10 arch, B = 32: ours (bf16, channels-last) against the authors' iteration in fp32 eager
#      PyTorch (NCHW, for-loop Adam), interleaved; the issue's aim is >= 1.5x;
#   3. the runner against the plain loop under trainer=gpu (digits, and conv nets on CIFAR-10-shaped data).
# Results land in $OUT (or ./gpu_results when OUT is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/device.txt"
python -m pytest -q -m gpu tests 2>&1 | tail -n 30 | tee "$out/pytest_gpu.txt" || true  # the benchmarks run either way
PYTHONPATH=. python scripts/bench_soft_intro.py --device cuda --arch cifar10 --batch 32 --bf16 1 --authors-style 1 \
    --warmup 10 --steps 50 --out "$out/soft_intro_cifar10_b32_gpu.json"
PYTHONPATH=. python scripts/benchmark.py trainer=gpu --steps 200 --warmup 20 --out "$out/digits_gpu.json"
PYTHONPATH=. python scripts/benchmark.py trainer=gpu dataset=synthetic dataset.shape=[3,32,32] dataset.n_train=4096 \
    encoder=conv decoder=conv likelihood=discretized_logistic --steps 100 --warmup 20 --out "$out/conv32_gpu.json"
