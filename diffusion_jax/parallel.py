"""Meshes and shardings for training on every device of every host, and multi-host start-up.

    parallel.maybe_initialize_distributed()          # before any other JAX call on a multi-host job
    mesh = parallel.make_mesh(fsdp=1)                # ('data', 'fsdp') over all devices, all hosts
    batch = parallel.global_batch(mesh, local_batch) # host-local numpy -> one sharded jax.Array
    params_here = parallel.to_local(state.ema_params) # a full copy on this host's devices

Shardings: the batch is split along its leading axis over every mesh axis (`batch_sharding(mesh)`).
The state is replicated (`replicated(mesh)`), or with an 'fsdp' axis of size > 1 each large array
is split along one of its dimensions over 'fsdp' (ZeRO-3 / FSDP: `state_shardings`). Under `jit`
with these shardings XLA inserts the gradient all-reduce (or the parameter all-gathers and gradient
reduce-scatters), so the train step is written as if for one device. Host order: process p feeds
the rows [p * B / P, (p + 1) * B / P) of each global batch of B rows (`jax.devices()` lists devices
process by process, and the meshes keep that order), which is why `data.make_train_iterator` gives
each host a contiguous block of every global batch.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# Arrays with fewer elements stay replicated under FSDP: gathering them costs more in latency
# than their memory is worth (biases, norms, the step counter, the PRNG key).
FSDP_MIN_SIZE = 2**12


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else None


def _multi_process_env() -> bool:
    """Whether the launcher says that this process is one of several."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("COORDINATOR_ADDRESS"):
        return True
    if (_env_int("SLURM_NTASKS") or 1) > 1:
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    force: bool = False,
    initialization_timeout: int = 300,
    heartbeat_timeout: int = 100,
) -> bool:
    """Calls `jax.distributed.initialize` when launched as one process of several: given explicit
    arguments (the CLI's --coordinator_address / --num_processes / --process_id), the environment
    (JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID, SLURM with more than one
    task, a multi-host TPU slice), or `force=True` (JAX's own cluster detection, e.g. on a TPU pod).
    Arguments left at None come from those variables, then from JAX's cluster detection (SLURM,
    Cloud TPU, Open MPI, ...). A single process with none of these does nothing, and so does a
    second call. Returns whether JAX is running distributed after the call.
    initialization_timeout: seconds to wait for every process to connect (then it raises).
    heartbeat_timeout: seconds without a heartbeat after which a process counts as dead; the
      survivors then terminate with "the JAX distributed service detected fatal errors ...
      another task died" (instead of blocking in a collective forever)."""
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID")
    explicit = coordinator_address is not None or num_processes not in (None, 1)
    if not (force or explicit or _multi_process_env()):
        return False
    if num_processes == 1:
        return False
    # Values still missing are left to JAX's cluster detection on SLURM and TPU slices.
    detectable = (
        force or (_env_int("SLURM_NTASKS") or 1) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ
    )
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}  # fmt: skip
    missing = [flag for flag, value in given.items() if value is None]
    if explicit and missing and not detectable:
        raise ValueError(
            f"A multi-process run needs --coordinator_address, --num_processes and --process_id "
            f"(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); missing "
            f"{', '.join(missing)}."
        )
    _use_cpu_collectives()
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=int(initialization_timeout),
        heartbeat_timeout_seconds=int(heartbeat_timeout),
    )
    log.info("JAX distributed: process %d of %d, %d local devices of %d", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())  # fmt: skip
    return True


def _use_cpu_collectives() -> None:
    """Cross-process collectives on CPU need an implementation (gloo); GPUs and TPUs ignore it."""
    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a jax without the option: nothing to choose
        pass


def is_main_process() -> bool:
    """Process 0: the one that writes logs, TensorBoard events, images and sample files."""
    return jax.process_index() == 0


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
    """A 2-D ('data', 'fsdp') mesh: `fsdp` devices share each parameter's shards, and the batch is
    split over all of them (fsdp=1: plain data parallelism, replicated state). Devices keep
    `jax.devices()`'s order (process by process), so an fsdp group lies within one host whenever
    fsdp divides the local device count: its all-gathers stay on the fast links."""
    devices = jax.devices() if devices is None else list(devices)
    n, fsdp = len(devices), int(fsdp)
    if fsdp < 1 or n % fsdp:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ValueError(
            f"training.fsdp={fsdp} does not divide the {n} devices; choose one of {divisors}."
        )
    return Mesh(np.asarray(devices).reshape(n // fsdp, fsdp), (DATA_AXIS, FSDP_AXIS))


def local_mesh() -> Mesh:
    """A 1-D 'data' mesh over this process's devices (per-process sampling and evaluation)."""
    return data_mesh(jax.local_devices())


def fsdp_size(mesh: Mesh) -> int:
    return int(mesh.shape.get(FSDP_AXIS, 1))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every mesh axis; the other axes whole."""
    names = tuple(mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(names[0] if len(names) == 1 else names))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over devices (and hence over hosts)."""
    num = mesh.devices.size
    if global_batch_size % num:
        raise ValueError(
            f"training.batch_size={global_batch_size} does not split over {num} devices: use a "
            f"multiple of {num}, e.g. {max(num, global_batch_size // num * num)} or "
            f"{-(-global_batch_size // num) * num} (or keep the batch and use "
            "training.grad_accum_steps on fewer devices)."
        )


def fsdp_spec(shape: tuple[int, ...], size: int, min_size: int = FSDP_MIN_SIZE) -> PartitionSpec:
    """The spec of one array under FSDP over `size` devices: its largest dimension that `size`
    divides is split over 'fsdp' (the last such on ties); small or indivisible arrays stay whole."""
    if size <= 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    candidates = [(d, i) for i, d in enumerate(shape) if d % size == 0]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)
    return PartitionSpec(*([None] * axis), FSDP_AXIS)


def state_shardings(tree: Any, mesh: Mesh, *, min_size: int = FSDP_MIN_SIZE) -> Any:
    """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) on `mesh`: replicated, or
    split over 'fsdp' by `fsdp_spec` when the mesh has an 'fsdp' axis of size > 1."""
    size = fsdp_size(mesh)
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), size, min_size)), tree
    )


def per_device_bytes(tree: Any) -> int:
    """Bytes that one device holds of a pytree of sharded arrays or ShapeDtypeStructs with
    shardings (the largest over devices; leaves without a sharding count whole)."""
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        sharding = getattr(x, "sharding", None)
        shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def global_batch(mesh: Mesh, local_batch: dict) -> dict:
    """Assembles each host's block of rows into global arrays sharded along the batch axis."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def to_local(tree: Any, mesh: Mesh | None = None) -> Any:
    """Every array of `tree` as a full copy replicated over this process's devices (`mesh`,
    default `local_mesh()`), for per-process work (sampling, evaluation). Arrays split across
    devices are all-gathered first, so with several processes every process must call this at the
    same point; replicated arrays are reassembled from the local copies, with no communication."""
    mesh = local_mesh() if mesh is None else mesh
    target = replicated(mesh)
    gathered: dict[Mesh, Any] = {}

    def one(x):
        if not isinstance(x, jax.Array):
            return jax.device_put(x, target)
        if jax.process_count() == 1:
            return jax.device_put(x, target)
        if not x.is_fully_replicated:
            source = x.sharding.mesh if isinstance(x.sharding, NamedSharding) else None
            if source is None:
                raise ValueError(f"Cannot gather an array with sharding {x.sharding}.")
            if source not in gathered:
                gathered[source] = jax.jit(lambda a: a, out_shardings=replicated(source))
            x = gathered[source](x)
        by_device = {s.device: s.data for s in x.addressable_shards}
        if set(by_device) != set(mesh.devices.flat):
            return jax.device_put(np.asarray(x.addressable_shards[0].data), target)
        arrays = [by_device[d] for d in mesh.devices.flat]
        return jax.make_array_from_single_device_arrays(x.shape, target, arrays)

    return jax.tree_util.tree_map(one, tree)


def allgather_rows(local: np.ndarray, *, chunk_bytes: int = 64 << 20) -> np.ndarray:
    """Every process's rows (counts may differ), concatenated in process order, on every process;
    a single process returns `local`. Rows travel as raw bytes (exact for any dtype, float64 too),
    at most `chunk_bytes` per process per collective: devices hold at most a chunk per process."""
    local = np.ascontiguousarray(local)
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    counts = multihost_utils.process_allgather(np.asarray([len(local)], np.int32))
    counts = np.asarray(counts).reshape(-1).astype(int)
    row_shape, dtype = local.shape[1:], local.dtype
    row_bytes = max(1, math.prod(row_shape) * dtype.itemsize)
    raw = local.reshape(len(local), math.prod(row_shape)).view(np.uint8)  # [n, row_bytes]
    most = int(counts.max())
    raw = np.concatenate([raw, np.zeros((most - len(raw), row_bytes), np.uint8)])
    step = max(1, chunk_bytes // row_bytes)
    parts = [  # each [P, rows, row_bytes]
        np.asarray(multihost_utils.process_allgather(raw[i : i + step]))
        for i in range(0, most, step)
    ]
    everything = np.concatenate(parts, axis=1) if parts else np.zeros((len(counts), 0, row_bytes))
    rows = np.concatenate([everything[p, :c] for p, c in enumerate(counts)]).astype(np.uint8)
    return rows.view(dtype).reshape(-1, *row_shape)
