"""Speed settings outside the model: JAX's persistent compilation cache, and XLA flags for CPUs.

    from diffusion_jax import perf
    perf.use_cpu_xla_flags()                         # before JAX starts its CPU backend
    perf.enable_compilation_cache()                  # $DIFFUSION_JAX_CACHE_DIR or ~/.cache/...
    perf.enable_compilation_cache("/scratch/xla")    # e.g. a directory shared by a job's hosts

The flags change which kernels compute the convolutions, and so the last bits of the results: a
run resumed from Python without `use_cpu_xla_flags()` is not bit-for-bit the run the command
line would have continued (it is within float32 rounding). With the cache, a process compiling a
program compiled before (same program, shapes, shardings, flags and versions) reads the executable
instead of running XLA again. Measured numbers for both: experiments/BENCHMARKS.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

CACHE_ENV = "DIFFUSION_JAX_CACHE_DIR"

# XLA:CPU sends convolutions to YNNPACK by default in jaxlib 0.10-0.12; its weight-gradient
# convolutions are slower than XLA's own (Eigen): the U-Net trains faster without them
# (experiments/BENCHMARKS.md). XLA aborts on an unknown flag: add it only where measured.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
CPU_XLA_FLAGS_JAXLIB = ((0, 10, 2), (0, 13, 0))  # [first, last) jaxlib versions measured


def default_cache_dir() -> Path:
    """$DIFFUSION_JAX_CACHE_DIR, else $XDG_CACHE_HOME/diffusion_jax/xla (~/.cache/...)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffusion_jax" / "xla"


def enable_compilation_cache(
    cache_dir: str | os.PathLike | None = None, *, min_compile_time_s: float = 1.0
) -> Path:
    """Turns on JAX's persistent compilation cache in `cache_dir` (default: `default_cache_dir()`)
    for every program whose compilation takes at least `min_compile_time_s` seconds; returns the
    directory. Programs that compile faster are cheaper to recompile than to read back."""
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _jaxlib_version() -> tuple[int, ...]:
    import jaxlib

    parts = []
    for part in jaxlib.__version__.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _backend_started() -> bool:
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if started else bool(getattr(xla_bridge, "_backends", {}))


def use_cpu_xla_flags(flags=CPU_XLA_FLAGS) -> list[str]:
    """Adds to XLA_FLAGS those `flags` whose name it does not set yet and returns them; nothing
    when jaxlib is outside `CPU_XLA_FLAGS_JAXLIB` or JAX's backends have started (XLA reads
    XLA_FLAGS once, when the first backend starts). GPU and TPU programs are unaffected."""
    first, last = CPU_XLA_FLAGS_JAXLIB
    if not first <= _jaxlib_version() < last or _backend_started():
        return []
    current = os.environ.get("XLA_FLAGS", "")
    names = {f.split("=", 1)[0] for f in current.split()}
    added = [f for f in flags if f.split("=", 1)[0] not in names]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
