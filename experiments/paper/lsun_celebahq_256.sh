#!/usr/bin/env bash
# DDPM (Ho et al. 2020) at 256x256: LSUN Church, Bedroom and Cat (Table 3 and Figs. 3-4) and
# CelebA-HQ, each with the 114M-parameter U-Net, batch 64, Adam 2e-5, L_simple, 1,000 steps.
#
#   dataset      config                               steps  paper FID (50,000 samples)
#   LSUN Church  diffusion_jax/configs/lsun_church.py    1.2M   7.89
#   LSUN Bedroom diffusion_jax/configs/lsun_bedroom.py   2.4M   6.36 (4.90: a larger, ~256M-param
#                                                            model trained 1.15M steps; no config)
#   LSUN Cat     diffusion_jax/configs/lsun_cat.py       1.8M   19.75
#   CelebA-HQ    diffusion_jax/configs/celebahq256.py    0.5M   none: the paper shows samples only
# (the paper's figures, its Table 3 and appendix B; ours: not yet run). The paper computed LSUN
# FIDs with StyleGAN2's code against the training images; here: FID's Inception-v3 against
# REF_IMAGES (50,000) training images of each dataset.
#
# Two settings of the configs come from the paper's release (hojonathanho/diffusion) and appendix:
#  - the 256x256 samples are drawn with the posterior variance beta~_t (fixed_small; its
#    diffusion_utils.py p_sample; only CIFAR-10 used beta_t), `ddpm256_config`'s var_type;
#  - appendix B: "random horizontal flips ... for all other datasets except LSUN Bedroom", so
#    lsun_bedroom.py trains without flips. (The release's scripts/run_lsun.py instead shows
#    --randflip 0 for LSUN Cat; the Cat config keeps its flips.)
#
#   WORKDIR=runs/paper DATA_DIR=/data/tfds DATASETS=lsun_church \
#     bash experiments/paper/lsun_celebahq_256.sh
#   MODE=pretrained PRETRAINED_ROOT=/models bash experiments/paper/lsun_celebahq_256.sh
# MODE=pretrained imports $PRETRAINED_ROOT/ddpm-{church,bedroom,cat,celebahq}-256 (the diffusers
# folders google/ddpm-*-256; their scheduler_config.json says fixed_small, as the paper sampled).
# Preparing LSUN needs tensorflow-io and large downloads (Bedroom alone is about 3M images);
# CelebA-HQ needs its files downloaded by hand into CELEBAHQ_MANUAL_DIR (TFDS celeb_a_hq).
# Batch 64 needs about 3.2 GB of activations per image: on fewer than 8 devices of 80 GB set
# GRAD_ACCUM so that 64 / (GRAD_ACCUM x devices) <= 8.
#
# Compute (estimates from XLA's FLOP counts, not measurements; experiments/paper/README.md):
#   train at 64 images x 1,476 GFLOP per step: Church 1.2M steps 1.13e20 FLOP (~80 H100-hours
#   at 40% of the bf16 dense peak), Bedroom 2.4M 2.27e20 (~159), Cat 1.8M 1.70e20 (~119),
#   CelebA-HQ 0.5M 4.72e19 (~33); twice that in float32. The paper: 2.2 steps/s on a TPU v3-8.
#   sample 50,000 x 1,000 steps x 492.3 GFLOP = 2.46e19 FLOP per dataset (~17 H100-hours).
#
# Results: $WORKDIR/results/<dataset>_<MODE>_fid.json ({"samples": {"fid": ...}}).
set -euo pipefail

WORKDIR="${WORKDIR:-runs/paper}"
DATA_DIR="${DATA_DIR:-$WORKDIR/tensorflow_datasets}"
MODE="${MODE:-train}"                       # train | pretrained
PRETRAINED_ROOT="${PRETRAINED_ROOT:-pretrained}"
CELEBAHQ_MANUAL_DIR="${CELEBAHQ_MANUAL_DIR:-$WORKDIR/manual/celeb_a_hq}"
DATASETS="${DATASETS:-lsun_church lsun_bedroom lsun_cat celebahq256}"
INCEPTION_PTH="${INCEPTION_PTH:-}"
INCEPTION_NPZ="${INCEPTION_NPZ:-$WORKDIR/inception/pt_inception-2015-12-05.npz}"
MODEL_DTYPE="${MODEL_DTYPE:-float32}"
GRAD_ACCUM="${GRAD_ACCUM:-1}"
NUM_SAMPLES="${NUM_SAMPLES:-50000}"
SAMPLE_BATCH="${SAMPLE_BATCH:-64}"
REF_IMAGES="${REF_IMAGES:-50000}"
SEED="${SEED:-0}"

if [[ "$MODE" != train && "$MODE" != pretrained ]]; then
  echo "MODE must be train or pretrained, not $MODE" >&2
  exit 2
fi
export TFDS_DATA_DIR="$DATA_DIR"
RESULTS="$WORKDIR/results"
mkdir -p "$RESULTS" "$WORKDIR/refs" "$(dirname "$INCEPTION_NPZ")"

diffusion-jax info --presets lsun256
if [[ ! -f "$INCEPTION_NPZ" ]]; then
  if [[ -n "$INCEPTION_PTH" ]]; then
    diffusion-jax fetch-inception --from "$INCEPTION_PTH" --out "$INCEPTION_NPZ"
  else
    diffusion-jax fetch-inception --out "$INCEPTION_NPZ"
  fi
fi

# ------------------------------------------------------------------ LSUN Church (paper: 7.89)
if [[ " $DATASETS " == *" lsun_church "* ]]; then
  NAME=lsun_church
  RUN="$WORKDIR/${NAME}_${MODE}"
  REF="$WORKDIR/refs/${NAME}_train_inception.npz"
  SAMPLES="$RUN/samples/ancestral1000_n${NUM_SAMPLES}_seed${SEED}.npz"
  diffusion-jax prepare-data lsun/church_outdoor --data_dir "$DATA_DIR"
  if [[ ! -f "$REF" ]]; then
    diffusion-jax ref-stats --config lsun_church --split train \
      --max_images "$REF_IMAGES" --data_dir "$DATA_DIR" --inception_weights "$INCEPTION_NPZ" \
      --out "$REF"
  fi
  if [[ "$MODE" == train ]]; then
    diffusion-jax train --config lsun_church --workdir "$RUN" \
      --config.data.data_dir="$DATA_DIR" --config.model.dtype="$MODEL_DTYPE" \
      --config.training.grad_accum_steps="$GRAD_ACCUM"
  elif [[ ! -d "$RUN" ]]; then
    diffusion-jax import-weights --from "$PRETRAINED_ROOT/ddpm-church-256" --out "$RUN" \
      --config lsun_church
  fi
  if [[ ! -f "$SAMPLES" ]]; then
    diffusion-jax sample --workdir "$RUN" --num "$NUM_SAMPLES" --sampler ancestral --steps 0 \
      --batch_size "$SAMPLE_BATCH" --seed "$SEED" --out "$SAMPLES"
  fi
  diffusion-jax evaluate --workdir "$RUN" --samples "$SAMPLES" --reference "$REF" \
    --metrics fid --inception_weights "$INCEPTION_NPZ" --seed "$SEED" \
    --out "$RESULTS/${NAME}_${MODE}_fid.json"
fi

# ----------------------------------------------------- LSUN Bedroom (paper: 6.36; large: 4.90)
if [[ " $DATASETS " == *" lsun_bedroom "* ]]; then
  NAME=lsun_bedroom
  RUN="$WORKDIR/${NAME}_${MODE}"
  REF="$WORKDIR/refs/${NAME}_train_inception.npz"
  SAMPLES="$RUN/samples/ancestral1000_n${NUM_SAMPLES}_seed${SEED}.npz"
  diffusion-jax prepare-data lsun/bedroom --data_dir "$DATA_DIR"
  if [[ ! -f "$REF" ]]; then
    diffusion-jax ref-stats --config lsun_bedroom --split train \
      --max_images "$REF_IMAGES" --data_dir "$DATA_DIR" --inception_weights "$INCEPTION_NPZ" \
      --out "$REF"
  fi
  if [[ "$MODE" == train ]]; then
    diffusion-jax train --config lsun_bedroom --workdir "$RUN" \
      --config.data.data_dir="$DATA_DIR" --config.model.dtype="$MODEL_DTYPE" \
      --config.training.grad_accum_steps="$GRAD_ACCUM"
  elif [[ ! -d "$RUN" ]]; then
    # import-weights prints the parameter count: 113,673,219 is the model of FID 6.36.
    diffusion-jax import-weights --from "$PRETRAINED_ROOT/ddpm-bedroom-256" --out "$RUN" \
      --config lsun_bedroom
  fi
  if [[ ! -f "$SAMPLES" ]]; then
    diffusion-jax sample --workdir "$RUN" --num "$NUM_SAMPLES" --sampler ancestral --steps 0 \
      --batch_size "$SAMPLE_BATCH" --seed "$SEED" --out "$SAMPLES"
  fi
  diffusion-jax evaluate --workdir "$RUN" --samples "$SAMPLES" --reference "$REF" \
    --metrics fid --inception_weights "$INCEPTION_NPZ" --seed "$SEED" \
    --out "$RESULTS/${NAME}_${MODE}_fid.json"
fi

# ------------------------------------------------------------------- LSUN Cat (paper: 19.75)
if [[ " $DATASETS " == *" lsun_cat "* ]]; then
  NAME=lsun_cat
  RUN="$WORKDIR/${NAME}_${MODE}"
  REF="$WORKDIR/refs/${NAME}_train_inception.npz"
  SAMPLES="$RUN/samples/ancestral1000_n${NUM_SAMPLES}_seed${SEED}.npz"
  diffusion-jax prepare-data lsun/cat --data_dir "$DATA_DIR"
  if [[ ! -f "$REF" ]]; then
    diffusion-jax ref-stats --config lsun_cat --split train \
      --max_images "$REF_IMAGES" --data_dir "$DATA_DIR" --inception_weights "$INCEPTION_NPZ" \
      --out "$REF"
  fi
  if [[ "$MODE" == train ]]; then
    diffusion-jax train --config lsun_cat --workdir "$RUN" \
      --config.data.data_dir="$DATA_DIR" --config.model.dtype="$MODEL_DTYPE" \
      --config.training.grad_accum_steps="$GRAD_ACCUM"
  elif [[ ! -d "$RUN" ]]; then
    diffusion-jax import-weights --from "$PRETRAINED_ROOT/ddpm-cat-256" --out "$RUN" \
      --config lsun_cat
  fi
  if [[ ! -f "$SAMPLES" ]]; then
    diffusion-jax sample --workdir "$RUN" --num "$NUM_SAMPLES" --sampler ancestral --steps 0 \
      --batch_size "$SAMPLE_BATCH" --seed "$SEED" --out "$SAMPLES"
  fi
  diffusion-jax evaluate --workdir "$RUN" --samples "$SAMPLES" --reference "$REF" \
    --metrics fid --inception_weights "$INCEPTION_NPZ" --seed "$SEED" \
    --out "$RESULTS/${NAME}_${MODE}_fid.json"
fi

# ------------------------------------------------------- CelebA-HQ (paper: samples, no FID)
if [[ " $DATASETS " == *" celebahq256 "* ]]; then
  NAME=celebahq256
  RUN="$WORKDIR/${NAME}_${MODE}"
  REF="$WORKDIR/refs/${NAME}_train_inception.npz"
  SAMPLES="$RUN/samples/ancestral1000_n${NUM_SAMPLES}_seed${SEED}.npz"
  diffusion-jax prepare-data celeb_a_hq --data_dir "$DATA_DIR" --manual_dir "$CELEBAHQ_MANUAL_DIR"
  if [[ ! -f "$REF" ]]; then
    diffusion-jax ref-stats --config celebahq256 --split train \
      --max_images "$REF_IMAGES" --data_dir "$DATA_DIR" --inception_weights "$INCEPTION_NPZ" \
      --out "$REF"
  fi
  if [[ "$MODE" == train ]]; then
    diffusion-jax train --config celebahq256 --workdir "$RUN" \
      --config.data.data_dir="$DATA_DIR" --config.model.dtype="$MODEL_DTYPE" \
      --config.training.grad_accum_steps="$GRAD_ACCUM"
  elif [[ ! -d "$RUN" ]]; then
    diffusion-jax import-weights --from "$PRETRAINED_ROOT/ddpm-celebahq-256" --out "$RUN" \
      --config celebahq256
  fi
  if [[ ! -f "$SAMPLES" ]]; then
    diffusion-jax sample --workdir "$RUN" --num "$NUM_SAMPLES" --sampler ancestral --steps 0 \
      --batch_size "$SAMPLE_BATCH" --seed "$SEED" --out "$SAMPLES"
  fi
  diffusion-jax evaluate --workdir "$RUN" --samples "$SAMPLES" --reference "$REF" \
    --metrics fid --inception_weights "$INCEPTION_NPZ" --seed "$SEED" \
    --out "$RESULTS/${NAME}_${MODE}_fid.json"
fi

echo "Results: $RESULTS/<dataset>_${MODE}_fid.json"
