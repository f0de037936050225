#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: every worker (host) runs the same command.
#
#   TPU_NAME=ddpm ZONE=us-east5-a ACCELERATOR=v5p-32 RUNS=/mnt/runs bash experiments/launch/tpu_pod.sh
#
# v5p-32 is 16 chips on 4 hosts (the number in the name counts TensorCores, two per chip).
# `--distributed` makes each worker call jax.distributed.initialize(), which finds the other
# workers through the TPU metadata; every worker then feeds its 4 chips its block of each global
# batch. The global batch (training.batch_size) must be a multiple of the chip count: see README.md
# in this folder. The workdir (checkpoints, logs) must be one directory that every worker sees:
# a Filestore / NFS mount at the same path on each worker (the training loop writes its logs with
# local file calls, so a gs:// workdir is not supported yet).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v5p-32}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5}"          # the TPU VM image for the chip generation
REPO="${REPO:?set REPO to the git URL of this repository}"
RUNS="${RUNS:-/mnt/runs}"                      # shared by every worker
CONFIG="${CONFIG:-cifar10}"
BATCH="${BATCH:-128}"                          # global; 128 / 16 chips = 8 per chip

run_all() {  # the same command on every worker of the slice
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

if [[ "${CREATE:-0}" == 1 ]]; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
fi

run_all "test -d diffusion_jax || git clone $REPO diffusion_jax; cd diffusion_jax && \
  python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[tpu]'"
# Each worker reads its own shard of the data, from its own prepared copy (or a shared data_dir).
run_all "cd diffusion_jax && . .venv/bin/activate && diffusion-jax prepare-data cifar10"
run_all "cd diffusion_jax && . .venv/bin/activate && \
  diffusion-jax train --distributed --config $CONFIG --workdir $RUNS/$(basename "$CONFIG" .py) \
    --config.training.batch_size=$BATCH --heartbeat_timeout=300"
# Preemption: a SIGTERM on the slice reaches every worker; they agree on a step, save a
# checkpoint and stop. Running the last command again resumes from the latest checkpoint.
