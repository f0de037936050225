#!/usr/bin/env bash
# The commands behind experiments/BENCHMARKS.md's CPU rows, one after the other (about 50 minutes
# on 2 cores). Run from the repository root in an environment with the `torch` extra installed
# (the PyTorch peer); PY312 optionally names a Python 3.12 interpreter with diffusion_jax installed
# (its peer runs under PEER_PYTHON, which has torch).
set -euo pipefail
OUT="${OUT:-experiments/results/benchmarks}"
PY="${PY:-python}"
PEER_PYTHON="${PEER_PYTHON:-$PY}"
mkdir -p "$OUT"
quiet=(--max_others_cores 0.3 --retries 2 --quiet_wait 120)

# Ours against the PyTorch peer at equal batch, alternating rounds.
"$PY" -m experiments.benchmarks.run --model cifar10 --batch 8 --what train,forward,peer \
    --rounds 3 --steps 7 "${quiet[@]}" --label "cpu cifar10 b8" --out "$OUT/cpu_cifar10_b8_py311_final.json"
"$PY" -m experiments.benchmarks.run --model cifar10 --batch 32 --what train,forward,peer \
    --rounds 2 --steps 5 "${quiet[@]}" --label "cpu cifar10 b32" --out "$OUT/cpu_cifar10_b32_py311.json"
if [[ -n "${PY312:-}" ]]; then
  "$PY312" -m experiments.benchmarks.run --model cifar10 --batch 8 --what train,forward,peer \
      --peer_python "$PEER_PYTHON" --rounds 3 --steps 7 "${quiet[@]}" --label "cpu cifar10 b8 py312" \
      --out "$OUT/cpu_cifar10_b8_py312.json"
fi
# Samplers (10 respaced steps per chain) and FID's Inception-v3.
"$PY" -m experiments.benchmarks.run --model cifar10 --batch 8 --what sample,inception \
    --sample_steps 10 --steps 3 "${quiet[@]}" --label "cpu cifar10 sampling" \
    --out "$OUT/cpu_cifar10_b8_sample_inception.json"
# Fast paths, each against the baseline (which runs first and last).
"$PY" -m experiments.benchmarks.fastpaths --model cifar10 --batch 8 --steps 5 \
    --variants baseline,jaxlib_default,bfloat16,donate,remat_dots,remat_full,xla_concurrency_scheduler,threefry_not_partitionable \
    --out "$OUT/fastpaths_cifar10_b8.json"
"$PY" -m experiments.benchmarks.fastpaths --model cifar10 --batch 8 --steps 5 --repeats 3 \
    --variants baseline,donate --out "$OUT/fastpaths_cifar10_b8_donation.json"
# Two train steps per dispatch (lax.scan): one timed call, since each takes about a minute here.
"$PY" -m experiments.benchmarks.run --model cifar10 --batch 8 --what train --scan 2 --steps 1 \
    --warmup 0 --label "scan2" --out "$OUT/cpu_cifar10_b8_scan2.json"
"$PY" -m experiments.benchmarks.fastpaths --model lsun_church --batch 1 --steps 2 \
    --variants baseline,remat_dots,remat_full --out "$OUT/fastpaths_lsun256_b1.json"
"$PY" -m experiments.benchmarks.remat_memory --model lsun_church --batch 4 \
    > "$OUT/remat_memory_lsun256_b4.jsonl"
# Compilation: plain, persistent cache (cold, warm), serialized executable.
"$PY" -m experiments.benchmarks.compile_cache --model cifar10 --batch 8 > "$OUT/compile_cache_cifar10_b8.json"
# The same update on 1, 2, 4, 8 simulated devices.
"$PY" -m experiments.benchmarks.scaling --devices 1,2,4,8 --model tiny --batch 16 --steps 4 \
    > "$OUT/scaling_tiny_cpu.json"
"$PY" -m experiments.benchmarks.report "$OUT"/*.json
