#!/usr/bin/env bash
# A multi-process run on this machine: 2 processes x 4 CPU devices, as 2 hosts of 4 chips would
# run it (the same checkpoints, global batches and final parameters as 1 process of 8 devices).
#
#   bash experiments/launch/local.sh [WORKDIR] [extra train flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
WORKDIR="${1:-runs/tiny_2x4}"
shift || true
exec python experiments/launch/local.py --num_processes 2 --devices_per_process 4 -- \
  python -m diffusion_jax train --config tiny --workdir "$WORKDIR" \
  --heartbeat_timeout 30 "$@"
