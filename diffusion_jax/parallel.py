"""Devices, meshes and shardings for data-parallel training on every device of every host.

    parallel.maybe_initialize_distributed()          # before any other JAX call on a multi-host job
    mesh = parallel.data_mesh()                      # one 'data' axis over all devices, all hosts
    batch = parallel.global_batch(mesh, local_batch) # host-local numpy -> one sharded jax.Array

Parameters and optimizer state are replicated (`replicated(mesh)`); batches are split along their
leading axis over the 'data' axis (`batch_sharding(mesh)`). Under `jit` with these shardings XLA
inserts the gradient all-reduce, so the train step is written as if for one device.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
# Environment variables that mean "this process is one of several": a coordinator address set by
# the launcher, SLURM with more than one task, or a multi-host TPU slice.
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize()` when launched as one process of several.

    On Cloud TPU pods, SLURM and with JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID set,
    JAX discovers the cluster itself; a single-process run does nothing. Returns True if it
    initialised."""
    multi = any(os.environ.get(k) for k in _MULTI_PROCESS_ENV)
    multi |= int(os.environ.get("SLURM_NTASKS", "1")) > 1
    multi |= "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if not multi:
        return False
    jax.distributed.initialize()
    return True


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data'; the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over devices (and hence over hosts)."""
    num = mesh.devices.size
    if global_batch_size % num:
        raise ValueError(
            f"training.batch_size={global_batch_size} does not split over {num} devices: use a "
            f"multiple of {num}, e.g. {max(num, global_batch_size // num * num)}."
        )


def global_batch(mesh: Mesh, local_batch: dict) -> dict:
    """Assembles each host's slice of the batch into global arrays sharded along 'data'."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }
