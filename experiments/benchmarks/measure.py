"""Measuring a compiled JAX function: compile and step times, XLA's FLOP and memory counts, the
device's peak, and the machine the numbers came from.

    compiled, compile_times = measure.compile_timed(jax.jit(f), *args)  # lower_s, compile_s
    times = measure.time_calls(lambda: compiled(*args), steps=5, warmup=1)  # median/min/max
    flops = measure.cost_flops(compiled)               # XLA's cost analysis of the executable
    flops_check = measure.jaxpr_flops(f, *args)        # dot/conv FLOPs counted from the jaxpr
    peak = measure.peak_flops(jax.devices()[0], "float32")  # vendor table, or a CPU matmul
    measure.environment()                              # versions, CPU model, load, XLA_FLAGS

Nothing here changes what is measured: the timers block on the outputs (`jax.block_until_ready`),
warm-up calls are discarded, and the median, min and max of the timed calls are all reported.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import cpuload

# Vendor peak dense (no sparsity) throughput per chip, in TFLOP/s, from the vendors' data sheets.
# float32 on NVIDIA GPUs is the CUDA-core rate; XLA may run float32 matmuls as TF32 on tensor
# cores, which is faster, so a float32 utilisation above 100% on a GPU means TF32 was used.
# TPUs do not publish a float32 rate (their MXUs run bfloat16 passes).
VENDOR_PEAK_TFLOPS: dict[str, dict[str, float | None]] = {
    "H200": {"bfloat16": 989.0, "float32": 67.0},  # SXM; NVIDIA H200 data sheet
    "H100": {"bfloat16": 989.0, "float32": 67.0},  # SXM; the PCIe card: 756 / 51
    "A100": {"bfloat16": 312.0, "float32": 19.5},  # SXM and PCIe
    "TPU v4": {"bfloat16": 275.0, "float32": None},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": None},  # v5e
    "TPU v5p": {"bfloat16": 459.0, "float32": None},
    "TPU v5": {"bfloat16": 459.0, "float32": None},  # v5p reports device_kind "TPU v5"
    "TPU v6 lite": {"bfloat16": 918.0, "float32": None},  # v6e (Trillium)
}
VENDOR_NOTE = "vendor spec sheet, dense, per chip"


def compile_timed(jitted, *args, **kwargs) -> tuple[Any, dict[str, float]]:
    """AOT-compiles `jitted` for `args`: (compiled, {"lower_s": tracing and lowering to
    StableHLO, "compile_s": XLA compilation})."""
    start = time.perf_counter()
    lowered = jitted.lower(*args, **kwargs)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    return compiled, {"lower_s": round(lower_s, 3), "compile_s": round(compile_s, 3)}


# Re-timing when other processes were busy: (max other cores, retries, seconds to wait for quiet).
_RETRY = {"max_others_cores": None, "retries": 0, "quiet_wait_s": 0.0}


def configure_retries(max_others_cores: float | None, retries: int, quiet_wait_s: float) -> None:
    """Makes `time_calls` time again (up to `retries` times, after waiting up to `quiet_wait_s`
    for quiet) when other processes used more than `max_others_cores` cores during the timing;
    the attempt with the least interference is kept. None: never."""
    _RETRY.update(
        max_others_cores=max_others_cores, retries=int(retries), quiet_wait_s=float(quiet_wait_s)
    )


def time_calls(call: Callable[[], Any], *, steps: int, warmup: int) -> dict[str, Any]:
    """Calls `call()` warmup + steps times, blocking on each result; statistics of the timed
    `steps` calls in seconds (median, min, max, mean), the list of them, and the CPU cores that
    other processes used meanwhile (`cpuload.Others`). See `configure_retries`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    for _ in range(warmup):
        jax.block_until_ready(call())
    attempts = []
    for attempt in range(_RETRY["retries"] + 1):
        if attempt:
            cpuload.wait_until_quiet(timeout_s=_RETRY["quiet_wait_s"])
        times = []
        with cpuload.Others() as others:
            for _ in range(steps):
                start = time.perf_counter()
                jax.block_until_ready(call())
                times.append(time.perf_counter() - start)
        attempts.append(
            {**summarize(times), "others_cores": others.cores, "steal_cores": others.steal}
        )
        limit = _RETRY["max_others_cores"]
        if limit is None or others.cores is None or others.cores <= limit:
            break
    best = min(attempts, key=lambda a: a["others_cores"] or 0.0)
    if len(attempts) > 1:
        best["attempts"] = [(round(a["median_s"], 5), a["others_cores"]) for a in attempts]
    return best


def summarize(times: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
        "times_s": [round(t, 5) for t in times],
    }


def cost_flops(compiled) -> float | None:
    """FLOPs of one call of `compiled` according to XLA's cost analysis (None if not given).

    XLA counts a while loop's body once (it does not know the trip count)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def xla_memory(compiled) -> dict[str, int] | None:
    """XLA's buffer assignment of `compiled` in bytes: arguments, outputs, temporaries, and
    `total` = arguments + outputs + temporaries - aliased (donated) bytes."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    out = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
    }
    out["total_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    )
    return out


def peak_memory(device=None) -> dict[str, Any]:
    """The device's peak bytes in use (`device.memory_stats()`), or, where a backend has no
    memory statistics (the CPU), the process's peak resident set size, labelled as such."""
    device = device or jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return {"bytes": int(stats["peak_bytes_in_use"]), "kind": "device peak_bytes_in_use"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"bytes": int(rss), "kind": "process peak RSS (no device memory_stats)"}


# ----------------------------------------------------------------------------- FLOP counting


def _eqn_flops(eqn) -> int:
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        out = eqn.outvars[0].aval.shape
        return 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out = eqn.outvars[0].aval.shape
        rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feat, in feat, *spatial)
        per_output = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
        return 2 * math.prod(out) * per_output
    return 0


def _jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    total += times * _jaxpr_flops(inner)
    return total


def jaxpr_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of the matrix products and convolutions in `fn`'s jaxpr (2 per multiply-add),
    counted independently of XLA; elementwise work is not counted, and a `cond` counts all of
    its branches. A check on `cost_flops`, which counts everything XLA emits."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


# ----------------------------------------------------------------------------- peaks


def vendor_peak(device_kind: str, dtype: str) -> float | None:
    """The vendor's peak FLOP/s of `device_kind` (e.g. "NVIDIA H100 80GB HBM3") in `dtype`."""
    for name in sorted(VENDOR_PEAK_TFLOPS, key=len, reverse=True):  # "TPU v5 lite" before "v5"
        if name.lower() in device_kind.lower():
            tflops = VENDOR_PEAK_TFLOPS[name].get(dtype)
            return None if tflops is None else tflops * 1e12
    return None


def measured_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """The best FLOP/s of a jitted [n, n] @ [n, n] matmul in `dtype` on the default device."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.dtype(dtype))
    f = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(f(a, b))
    best = min(_timed(lambda: jax.block_until_ready(f(a, b))) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


_CPU_PEAKS: dict[str, float] = {}


def peak_flops(device, dtype: str) -> dict[str, Any]:
    """{"flops_per_s", "source"}: the vendor table for accelerators; on a CPU, the measured peak
    of a jitted matmul in `dtype` (cached per process)."""
    if device.platform == "cpu":
        if dtype not in _CPU_PEAKS:
            _CPU_PEAKS[dtype] = measured_matmul_peak(dtype)
        return {
            "flops_per_s": _CPU_PEAKS[dtype],
            "source": f"measured: best jitted 2048x2048 {dtype} matmul on this CPU",
        }
    value = vendor_peak(device.device_kind, dtype)
    source = VENDOR_NOTE if value else f"no vendor figure for {device.device_kind!r} in {dtype}"
    return {"flops_per_s": value, "source": source}


# ----------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def package_versions(names=("jax", "jaxlib", "flax", "optax", "numpy")) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def environment() -> dict[str, Any]:
    """Where a number came from: devices, CPU, versions, XLA_FLAGS, the load average."""
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "versions": package_versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loadavg_1_5_15": loadavg(),
    }


def per_step(stats: dict[str, Any], k: int) -> dict[str, Any]:
    """`time_calls` statistics of a call that runs k steps, divided into per-step times."""
    if k == 1:
        return stats
    out = {key: v / k for key, v in stats.items() if key.endswith("_s") and key != "times_s"}
    out["times_s"] = [round(t / k, 5) for t in stats["times_s"]]
    out["others_cores"] = stats.get("others_cores")
    out["steal_cores"] = stats.get("steal_cores")
    return out


def rate(flops: float | None, seconds: float) -> float | None:
    return None if not flops or seconds <= 0 else flops / seconds


def np_tree_max_abs_diff(a, b) -> float:
    """max |a - b| over the leaves of two pytrees of arrays (0.0 for empty trees)."""

    def values(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x, np.float64)

    diffs = [
        float(np.max(np.abs(values(x) - values(y)), initial=0.0))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    ]
    return max(diffs, default=0.0)
