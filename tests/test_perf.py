"""diffusion_jax.perf: the CPU XLA flags the CLI adds, and the persistent compilation cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from diffusion_jax import perf

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> dict:
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    done = subprocess.run(
        [sys.executable, "-c", code], env=full_env, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


FLAGS_PROBE = """
import json, os
from diffusion_jax import perf
added = perf.use_cpu_xla_flags()
import jax
jax.numpy.zeros(2).block_until_ready()   # XLA starts with these flags and accepts them
again = perf.use_cpu_xla_flags(("--xla_cpu_enable_fast_math=false",))
print(json.dumps({"added": added, "env": os.environ["XLA_FLAGS"], "again": again,
                  "in_range": perf.CPU_XLA_FLAGS_JAXLIB[0] <= perf._jaxlib_version()
                  < perf.CPU_XLA_FLAGS_JAXLIB[1]}))
"""


def test_cpu_flags_are_added_once_and_only_before_the_backend_starts():
    out = _python(FLAGS_PROBE, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    if out["in_range"]:
        assert out["added"] == list(perf.CPU_XLA_FLAGS)
        assert out["env"].split() == ["--xla_force_host_platform_device_count=2", *out["added"]]
    else:  # a jaxlib the flag was not measured with: XLA_FLAGS is left alone
        assert out["added"] == [] and out["env"] == "--xla_force_host_platform_device_count=2"
    assert out["again"] == []  # the backend has started: XLA would not read a change


def test_a_flag_the_user_set_is_not_overridden():
    name = perf.CPU_XLA_FLAGS[0].split("=", 1)[0]
    out = _python(FLAGS_PROBE, XLA_FLAGS=f"{name}=individual_convolution")
    assert out["added"] == [] and out["env"] == f"{name}=individual_convolution"


CACHE_PROBE = """
import json, sys, time
from diffusion_jax import perf
perf.enable_compilation_cache(sys.argv[1], min_compile_time_s=0.0)
import jax, jax.numpy as jnp
def f(x):
    for _ in range(30):
        x = jnp.sin(x) @ x.T
    return x
t0 = time.perf_counter()
jax.jit(f).lower(jnp.ones((64, 64))).compile()
print(json.dumps({"compile_s": time.perf_counter() - t0}))
"""


def test_compilation_cache_is_written_then_read(tmp_path):
    cache = tmp_path / "xla"
    code = CACHE_PROBE.replace("sys.argv[1]", repr(str(cache)))
    _python(code)
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert entries, "the first process wrote nothing to the cache"
    mtimes = {p: p.stat().st_mtime_ns for p in entries}
    _python(code)
    # The second process read the same executable back instead of writing a new one.
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == mtimes


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(perf.CACHE_ENV, str(tmp_path / "c"))
    assert perf.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(perf.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert perf.default_cache_dir() == tmp_path / "diffusion_jax" / "xla"
