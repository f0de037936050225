"""Multi-process training: 2 processes x 4 CPU devices (gloo over loopback) against 1 x 8.

One scenario, to keep CI short: two processes train the tiny config; process 1 is killed
(SIGKILL) as step 3 begins, with the checkpoint of step 2 on disk; process 0 must then stop by
itself with JAX's error within a bounded time; both are restarted with the local launcher
(experiments/launch/local.py), resume from step 2 and finish; the final state must equal that of
an uninterrupted 1-process x 8-device run; then `sample` in 2 processes must draw the samples one
process of 8 devices draws. The processes share a persistent compilation cache, so the restart
does not compile again.

The model is the tiny config at width 64 (`model.ch=64`): at width 32 each GroupNorm group has one
channel, so the biases of the last block are cancelled by the output norm and their gradient is
pure rounding noise, which Adam scales up to learning-rate-sized steps that differ between any two
reduction orders (see tests/test_train_step.py).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from diffusion_jax import checkpoint, cli, parallel, setup
from diffusion_jax.sampling import generate, runs
from diffusion_jax.training.state import init_state

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny"
OVERRIDES = [
    "--config.model.ch=64",
    "--config.training.num_steps=4",
    "--config.training.checkpoint_every=2",
]
HEARTBEAT_S = 10  # a dead peer is noticed after this long
DEADLINE_S = 240  # no phase may take longer: a hang fails the test instead of blocking CI

# `diffusion-jax train` with the multi-process flags, where process `victim` SIGKILLs itself as
# step `at` begins (when it fetches that step's batch).
KILLING_RUN = """
import os, signal, sys
from diffusion_jax import cli, parallel
from diffusion_jax.training import train
victim, at, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
cli.flags.start_distributed(cli.flags.distributed_flags(argv)[0])
import jax
config, workdir = cli.flags.parse_train_flags(argv)
real, calls = parallel.global_batch, []
def global_batch(mesh, batch):
    calls.append(1)
    if len(calls) == at and jax.process_index() == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(mesh, batch)
parallel.global_batch = global_batch
train.train(config, workdir)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path, devices: int, port: int = 0) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.update(
        # Quick CPU compilation (both sides of the comparison compile alike).
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    if port:
        env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"  # loopback only
    return env


def _dist_flags(port: int, i: int) -> list[str]:
    return [
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        f"--heartbeat_timeout={HEARTBEAT_S}",
        "--init_timeout=60",
    ]


def _start(command: list[str], env: dict, log: Path) -> tuple[subprocess.Popen, dict]:
    """Starts `command`, its output to `log`; a thread records when it exits."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    exited: dict = {}

    def watch():
        proc.wait()
        exited["at"] = time.monotonic()

    threading.Thread(target=watch, daemon=True).start()
    return proc, exited


def _restore(workdir: Path, mesh) -> object:
    config, _ = cli.flags.parse_train_flags(
        ["--config", TINY, "--workdir", str(workdir), *OVERRIDES]
    )
    abstract, _ = init_state(setup.diffusion_parts(config), mesh)
    with checkpoint.Checkpointer(workdir, read_only=True) as ckpt:
        state, _ = ckpt.restore(abstract)
    return jax.device_get(state)


def test_two_processes_train_like_one_survive_a_killed_peer_and_resume(tmp_path):
    workdir, cache = tmp_path / "two_by_four", tmp_path / "jax_cache"
    args = ["--config", TINY, "--workdir", str(workdir), *OVERRIDES]
    port = _free_port()
    killing = [sys.executable, "-c", KILLING_RUN, "1", "3", *args]
    procs = [
        _start([*killing, *_dist_flags(port, i)], _env(cache, 4, port), tmp_path / f"p{i}.log")
        for i in (0, 1)
    ]
    # Meanwhile, the reference: one process of 8 devices, uninterrupted.
    reference_dir = tmp_path / "one_by_eight"
    train_cmd = [sys.executable, "-m", "diffusion_jax", "train", "--config", TINY, *OVERRIDES]
    procs.append(
        _start([*train_cmd, "--workdir", str(reference_dir)], _env(cache, 8), tmp_path / "r.log")
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while any(p.poll() is None for p, _ in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        outputs = [(tmp_path / name).read_text() for name in ("p0.log", "p1.log", "r.log")]
        (survivor, stopped), (victim, died), (reference, _) = procs
        assert reference.returncode == 0, outputs[2][-3000:]
        assert victim.returncode == -signal.SIGKILL, outputs[1][-3000:]
        # The survivor stops by itself, with JAX's error naming the dead task, within a bounded
        # time (a heartbeat timeout and JAX's polling), instead of waiting in a collective.
        assert survivor.returncode not in (None, 0), "process 0 hung after its peer died"
        assert "another task died" in outputs[0], outputs[0][-3000:]
        assert stopped["at"] - died["at"] < HEARTBEAT_S + 30
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    saved = sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == ["2"], saved

    # Restart both with the local launcher: they resume from step 2 and finish.
    sys.path.insert(0, str(ROOT / "experiments" / "launch"))
    try:
        import local
    finally:
        sys.path.pop(0)
    port = _free_port()
    command = [*train_cmd, "--workdir", str(workdir)]
    command += [f"--heartbeat_timeout={HEARTBEAT_S}", "--init_timeout=60"]
    logs = tmp_path / "resumed"
    status = local.launch(
        command,
        num_processes=2,
        devices_per_process=4,
        port=port,
        log_dir=str(logs),
        grace=30,
        timeout=DEADLINE_S,
        env=_env(cache, 4, port),
    )
    out0 = (logs / "process_0.log").read_text()
    assert status == 0, out0[-3000:] + (logs / "process_1.log").read_text()[-3000:]
    assert "Resumed the model from step 2" in out0
    assert "2 process(es), 8 devices" in out0

    # The final state equals the 1 x 8 run's (both restored onto this process's 8 devices).
    mesh = parallel.make_mesh()
    final, expected = _restore(workdir, mesh), _restore(reference_dir, mesh)
    assert int(final.step) == int(expected.step) == 4
    for name in ("params", "ema_params", "opt_state"):
        a, b = getattr(final, name), getattr(expected, name)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-5, err_msg=name)
    # Only process 0 writes the metrics: step 2 from the first run, step 4 from the second.
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]

    # Sampling splits the chunks over the processes and gathers them once: the 2 x 4 set equals
    # the one this process draws on its 8 devices (chunk i has the key fold_in(seed, i) and the
    # same 8 rows either way); process 0 alone writes the file.
    out = tmp_path / "samples.npz"
    sample = [sys.executable, "-m", "diffusion_jax", "sample", "--workdir", str(workdir)]
    sample += ["--num=20", "--batch_size=8", "--sampler=ddim", "--steps=4", f"--out={out}"]
    port = _free_port()
    status = local.launch(
        sample,
        num_processes=2,
        devices_per_process=4,
        port=port,
        log_dir=str(tmp_path / "sampled"),
        grace=30,
        timeout=DEADLINE_S,
        env=_env(cache, 4, port),
    )
    assert status == 0, (tmp_path / "sampled" / "process_0.log").read_text()[-3000:]
    assert "Wrote" not in (tmp_path / "sampled" / "process_1.log").read_text()
    run = runs.load_run(workdir)
    expected_images, _ = generate.generate(
        run, num=20, sampler="ddim", steps=4, batch_size=8, progress=False
    )
    with np.load(out) as f:
        images = f["arr_0"]
    assert images.shape == expected_images.shape == (20, 8, 8, 1)
    # The same samples; compiled apart, uint8 rounding may differ by one level.
    assert np.abs(images.astype(int) - expected_images.astype(int)).max() <= 1
    assert not np.array_equal(images[:8], images[8:16])  # the chunks differ


def test_single_process_runs_start_nothing_and_half_given_flags_are_refused(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert parallel.maybe_initialize_distributed() is False
    assert parallel.maybe_initialize_distributed(num_processes=1) is False
    assert not jax.distributed.is_initialized()
    with pytest.raises(ValueError, match="missing --num_processes, --process_id"):
        parallel.maybe_initialize_distributed("127.0.0.1:1234")
    # The train command takes the multi-process flags beside the config flags.
    argv = ["--config", TINY, "--workdir", "w", "--config.training.num_steps=3"]
    argv += ["--coordinator_address=127.0.0.1:5", "--num_processes", "2", "--process_id=1"]
    dist, _ = cli.flags.distributed_flags(argv)
    assert (dist.coordinator_address, dist.num_processes, dist.process_id) == ("127.0.0.1:5", 2, 1)
    config, workdir = cli.flags.parse_train_flags(argv)
    assert config.training.num_steps == 3 and workdir == "w"
