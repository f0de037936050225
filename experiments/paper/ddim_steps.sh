#!/usr/bin/env bash
# DDIM (Song, Meng & Ermon 2021), Table 1, CIFAR-10 column: FID of 50,000 samples against the
# number of sampling steps S, with eta = 0 (deterministic DDIM), from DDPM's CIFAR-10 model.
#
#   S                        10      20     50     100    1000
#   paper, eta = 0 (DDIM)    13.36   6.84   4.67   4.16   4.04    (the paper's figures;
#   paper, eta = 1 (DDPM)    41.07   18.36  8.01   5.78   4.73     ours: not yet run)
#
# DDIM used DDPM's released CIFAR-10 model and the quadratic timestep sequence for CIFAR-10
# (tau_i = floor(c i^2), its appendix D.2): here --spacing quad. ETA=1 reproduces the second row.
#
#   WORKDIR=runs/paper bash experiments/paper/ddim_steps.sh     # the run of cifar10_table1.sh
#   MODE=pretrained PRETRAINED_DIR=/models/ddpm-cifar10-32 bash experiments/paper/ddim_steps.sh
# MODE=train samples the run that cifar10_table1.sh trained ($WORKDIR/cifar10_train) and needs it
# trained first; MODE=pretrained imports google/ddpm-cifar10-32 (the model DDIM itself used).
# The variance type of the import does not matter here: DDIM's update does not use it.
#
# Compute (estimates from XLA's FLOP counts, not measurements; experiments/paper/README.md):
#   50,000 samples x S steps x 11.66 GFLOP: 5.8e15 / 1.2e16 / 2.9e16 / 5.8e16 / 5.8e17 FLOP for
#   S = 10 / 20 / 50 / 100 / 1000, 6.9e17 in all: ~0.5 H100-hours at 40% of the bf16 dense peak.
#   No training (it reuses Table 1's model).
#
# Results: $WORKDIR/results/ddim_cifar10_<TAG>_eta<ETA>_S<S>.json ({"samples": {"fid": ...}}).
set -euo pipefail

WORKDIR="${WORKDIR:-runs/paper}"
DATA_DIR="${DATA_DIR:-$WORKDIR/tensorflow_datasets}"
MODE="${MODE:-train}"                       # train | pretrained
PRETRAINED_DIR="${PRETRAINED_DIR:-ddpm-cifar10-32}"
INCEPTION_PTH="${INCEPTION_PTH:-}"
INCEPTION_NPZ="${INCEPTION_NPZ:-$WORKDIR/inception/pt_inception-2015-12-05.npz}"
NUM_SAMPLES="${NUM_SAMPLES:-50000}"
SAMPLE_BATCH="${SAMPLE_BATCH:-1000}"
SEED="${SEED:-0}"
ETA="${ETA:-0.0}"
STEPS="${STEPS:-10 20 50 100 1000}"

export TFDS_DATA_DIR="$DATA_DIR"
REF="$WORKDIR/refs/cifar10_train_inception.npz"
RESULTS="$WORKDIR/results"
mkdir -p "$RESULTS" "$WORKDIR/refs" "$(dirname "$INCEPTION_NPZ")"

# The reference statistics: CIFAR-10's training set, as for DDPM's FID.
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

if [[ "$MODE" == train ]]; then
  TAG=train
  RUN="$WORKDIR/cifar10_train"
  if [[ ! -d "$RUN/checkpoints" ]]; then
    echo "No trained model in $RUN: run experiments/paper/cifar10_table1.sh first." >&2
    exit 1
  fi
elif [[ "$MODE" == pretrained ]]; then
  TAG=pretrained
  RUN="$WORKDIR/cifar10_pretrained_ddim"
  if [[ ! -d "$RUN" ]]; then
    diffusion-jax import-weights --from "$PRETRAINED_DIR" --out "$RUN" --config cifar10
  fi
else
  echo "MODE must be train or pretrained, not $MODE" >&2
  exit 2
fi

for S in $STEPS; do
  SAMPLES="$RUN/samples/ddim_quad${S}_eta${ETA}_n${NUM_SAMPLES}_seed${SEED}.npz"
  if [[ ! -f "$SAMPLES" ]]; then
    diffusion-jax sample --workdir "$RUN" --num "$NUM_SAMPLES" --sampler ddim --steps "$S" \
      --spacing quad --eta "$ETA" --batch_size "$SAMPLE_BATCH" --seed "$SEED" --out "$SAMPLES"
  fi
  diffusion-jax evaluate --workdir "$RUN" --samples "$SAMPLES" --reference "$REF" \
    --metrics fid --inception_weights "$INCEPTION_NPZ" --seed "$SEED" \
    --out "$RESULTS/ddim_cifar10_${TAG}_eta${ETA}_S${S}.json"
done

echo "Results: $RESULTS/ddim_cifar10_${TAG}_eta${ETA}_S*.json"
