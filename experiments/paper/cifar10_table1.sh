#!/usr/bin/env bash
# DDPM (Ho et al. 2020), Table 1: unconditional CIFAR-10, the L_simple model.
#
# The paper's figures (Ho et al. 2020, Table 1; not ours): IS 9.46 +- 0.11, FID 3.17 (50,000
# samples against the training set), NLL <= 3.75 bits/dim on the test set (3.72 on train).
# Our result: not yet run.
#
# Run from the repository root on an accelerator host with every local device in use:
#   WORKDIR=runs/paper DATA_DIR=/data/tfds bash experiments/paper/cifar10_table1.sh
#   MODE=pretrained PRETRAINED_DIR=/models/ddpm-cifar10-32 bash experiments/paper/cifar10_table1.sh
# MODE=train trains DDPM's recipe (diffusion_jax/configs/cifar10.py) from scratch; MODE=pretrained
# imports the published weights (a local copy of the diffusers folder google/ddpm-cifar10-32:
# config.json + diffusion_pytorch_model.safetensors) and only samples and evaluates.
# Needs: pip install -e ".[cuda]" (or ".[tpu]"), and ".[prepare]" once to prepare CIFAR-10;
# the Inception weights are downloaded, or converted from INCEPTION_PTH
# (pt_inception-2015-12-05-6726825d.pth, needs torch).
#
# Compute (estimates from XLA's FLOP counts, not measurements; experiments/paper/README.md):
#   train   800,000 steps x 128 images x 35.0 GFLOP = 3.58e18 FLOP
#           ~2.5 H100-hours at 40% of the bf16 dense peak (MODEL_DTYPE=bfloat16), ~5.0 in float32
#           (TF32); the paper: 10.6 hours on a TPU v3-8 at 21 steps/s.
#   sample  50,000 images x 1,000 steps x 11.66 GFLOP (one forward pass) = 5.83e17 FLOP,
#           ~0.4 H100-hours at 40% of bf16 peak; the paper: 17 s per 256 images on a TPU v3-8.
#   NLL     10,000 test images x 1,000 terms x 11.66 GFLOP = 1.17e17 FLOP (~5 min); the train
#           split (50,000 images) 5.83e17 FLOP (~25 min).
#
# Results (JSON written by `diffusion-jax evaluate --out`):
#   $WORKDIR/results/cifar10_table1_$TAG_fid_is.json     {"samples": {"fid": ..., "is": ...}}
#   $WORKDIR/results/cifar10_table1_$TAG_nll_test.json   {"bpd": {"total_bpd": ..., ...}}
#   $WORKDIR/results/cifar10_table1_$TAG_nll_train.json
# with TAG = train, or pretrained_fixed_large / pretrained_fixed_small.
set -euo pipefail

WORKDIR="${WORKDIR:-runs/paper}"
DATA_DIR="${DATA_DIR:-$WORKDIR/tensorflow_datasets}"
MODE="${MODE:-train}"                       # train | pretrained
PRETRAINED_DIR="${PRETRAINED_DIR:-ddpm-cifar10-32}"
# The reverse-process variance for sampling and the bound. DDPM's CIFAR-10 samples used
# sigma_t^2 = beta_t (fixed_large): the default model_var_type 'fixedlarge' of the paper's
# scripts/run_cifar.py, and DDIM's Table 1, where that sampler gives 3.17 at 1,000 steps and
# beta~_t (fixed_small, eta = 1) gives 4.73. google/ddpm-cifar10-32's scheduler_config.json
# says fixed_small, which import-weights records; --var_type chooses at sampling time.
PRETRAINED_VARIANCE="${PRETRAINED_VARIANCE:-fixed_large}"   # fixed_large | fixed_small
INCEPTION_PTH="${INCEPTION_PTH:-}"
INCEPTION_NPZ="${INCEPTION_NPZ:-$WORKDIR/inception/pt_inception-2015-12-05.npz}"
MODEL_DTYPE="${MODEL_DTYPE:-float32}"       # float32 (the paper's) | bfloat16 (about 2x faster)
NUM_SAMPLES="${NUM_SAMPLES:-50000}"
SAMPLE_BATCH="${SAMPLE_BATCH:-1000}"
BPD_BATCH="${BPD_BATCH:-500}"
SEED="${SEED:-0}"

# TFDS reads this when a run's config names no data_dir (imported runs).
export TFDS_DATA_DIR="$DATA_DIR"
REF="$WORKDIR/refs/cifar10_train_inception.npz"
RESULTS="$WORKDIR/results"
mkdir -p "$RESULTS" "$WORKDIR/refs" "$(dirname "$INCEPTION_NPZ")"

diffusion-jax info --presets cifar10

# 1. Data, FID's Inception-v3 weights, and the reference statistics of the 50,000 training
#    images (DDPM's FID is against the training set; the test set gives 5.24 in the paper).
diffusion-jax prepare-data cifar10 --data_dir "$DATA_DIR"
if [[ ! -f "$INCEPTION_NPZ" ]]; then
  if [[ -n "$INCEPTION_PTH" ]]; then
    diffusion-jax fetch-inception --from "$INCEPTION_PTH" --out "$INCEPTION_NPZ"
  else
    diffusion-jax fetch-inception --out "$INCEPTION_NPZ"
  fi
fi
if [[ ! -f "$REF" ]]; then
  diffusion-jax ref-stats --dataset cifar10 --split train --data_dir "$DATA_DIR" \
    --inception_weights "$INCEPTION_NPZ" --out "$REF"
fi

# 2. The model: DDPM's recipe (800k steps, batch 128), or the published weights.
if [[ "$MODE" == train ]]; then
  TAG=train
  RUN="$WORKDIR/cifar10_train"
  # Resumes from the latest checkpoint when run again; a finished run returns at once.
  diffusion-jax train --config cifar10 --workdir "$RUN" \
    --config.data.data_dir="$DATA_DIR" --config.model.dtype="$MODEL_DTYPE"
elif [[ "$MODE" == pretrained ]]; then
  TAG="pretrained_$PRETRAINED_VARIANCE"
  RUN="$WORKDIR/cifar10_$TAG"
  if [[ ! -d "$RUN" ]]; then
    diffusion-jax import-weights --from "$PRETRAINED_DIR" --out "$RUN" --config cifar10
  fi
else
  echo "MODE must be train or pretrained, not $MODE" >&2
  exit 2
fi

# 3. 50,000 samples with the full 1,000-step ancestral sampler, from the EMA parameters.
SAMPLES="$RUN/samples/ancestral1000_n${NUM_SAMPLES}_seed${SEED}.npz"
if [[ ! -f "$SAMPLES" ]]; then
  diffusion-jax sample --workdir "$RUN" --num "$NUM_SAMPLES" --sampler ancestral --steps 0 \
    --var_type "$PRETRAINED_VARIANCE" --batch_size "$SAMPLE_BATCH" --seed "$SEED" --out "$SAMPLES"
fi

# 4. FID and Inception Score (10 splits, as DDPM reports it) of those samples.
diffusion-jax evaluate --workdir "$RUN" --samples "$SAMPLES" --reference "$REF" \
  --metrics fid,is --inception_weights "$INCEPTION_NPZ" --seed "$SEED" \
  --out "$RESULTS/cifar10_table1_${TAG}_fid_is.json"

# 5. The NLL bound: all 1,000 terms L_T + ... + L_0 over the test split, then the train split.
diffusion-jax evaluate --workdir "$RUN" --bpd --split test --bpd_batch_size "$BPD_BATCH" \
  --var_type "$PRETRAINED_VARIANCE" --seed "$SEED" --out "$RESULTS/cifar10_table1_${TAG}_nll_test.json"
diffusion-jax evaluate --workdir "$RUN" --bpd --split train --bpd_batch_size "$BPD_BATCH" \
  --var_type "$PRETRAINED_VARIANCE" --seed "$SEED" --out "$RESULTS/cifar10_table1_${TAG}_nll_train.json"

echo "Results: $RESULTS/cifar10_table1_${TAG}_{fid_is,nll_test,nll_train}.json"
