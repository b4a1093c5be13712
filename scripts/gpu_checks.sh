#!/usr/bin/env bash
# The GPU checks, in one run of about 8 minutes on a CUDA machine (written for one H200), JSON and logs into $OUT
# (./gpu_results when OUT is unset):
#   1. the gpu-marked tests: the recorded (CUDA-graph) training step for each objective, no host-device sync inside
#      the step, experiment=sos_vae at 3x218x178 under trainer=gpu, the data-on-device fast path;
#   2. Soft-IntroVAE, CIFAR-10 arch, B=32: ours (recorded step; fp32 and bf16) interleaved with the authors' fp32
#      eager iteration, and the GPU's busy share at B=256;
#   3. the main job (digits) and a 3x32x32 conv model under trainer=gpu: the runner against the plain loop, both
#      recorded (bf16-mixed and 32-true);
#   4. a 16-seed grid of the main job: one job at a time against 12 at once (hydra/launcher=parallel).
# Needs the project's dependencies importable (hydra-core, omegaconf, zuko, hydra-joblib-launcher) and pytest.
# The CPU figures these are compared with are in BENCHMARKS.md (same commands with trainer=cpu).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:-}:$PWD" PYTHONUNBUFFERED=1 WANDB_MODE=offline
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, go on either way
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T))"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "   exit $? ($(date +%T))"
    tail -n 3 "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/device.txt"

step pytest_gpu 150 python -m pytest -q -m gpu -p no:cacheprovider tests
for precision in 0 1; do
    step "soft_intro_b32_bf16_$precision" 45 python scripts/bench_soft_intro.py --device cuda --arch cifar10 \
        --batch 32 --bf16 "$precision" --capture 1 --authors-style 1 --warmup 10 --steps 50 --busy-steps 20 \
        --out "$out/soft_intro_cifar10_b32_bf16_$precision.json"
done
step soft_intro_b256_busy 45 python scripts/bench_soft_intro.py --device cuda --arch cifar10 --batch 256 --bf16 1 \
    --capture 1 --warmup 5 --steps 20 --busy-steps 20 --out "$out/soft_intro_cifar10_b256.json"
for precision in bf16-mixed 32-true; do
    step "digits_$precision" 45 python scripts/benchmark.py trainer=gpu "trainer.precision=$precision" \
        --steps 200 --warmup 20 --rounds 3 --skip-nll --out "$out/digits_gpu_$precision.json"
done
step conv32 45 python scripts/benchmark.py trainer=gpu dataset=synthetic dataset.shape=[3,32,32] \
    dataset.n_train=4096 encoder=conv decoder=conv likelihood=discretized_logistic \
    --steps 100 --warmup 20 --rounds 2 --skip-nll --out "$out/conv32_gpu.json"
step grid16 240 python scripts/bench_grid.py --device cuda --seeds 16 --jobs 12 --repeats 1 \
    trainer.max_epochs=5 eval.nll_samples=100 --out "$out/grid_digits_cuda.json"
echo "done ($(date +%T)); files in $out"
