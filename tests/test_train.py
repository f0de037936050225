"""End-to-end training on tiny configs: resumption, preemption, errors, toy2d, the README job."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from diffusion_jax import checkpoint, configs, parallel, setup
from diffusion_jax.data import pipeline as data
from diffusion_jax.evaluation import two_sample
from diffusion_jax.training import train
from diffusion_jax.training.state import init_state

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny"

# Trains like `diffusion-jax train`, sending itself `signal` after step `at` (through the public
# evaluation hook), to play a preemption (SIGTERM) or a crash (SIGKILL) at a known step.
SIGNALLING_RUN = """
import os, signal, sys
from diffusion_jax import cli, perf
from diffusion_jax.training import train
perf.use_cpu_xla_flags()  # as `diffusion-jax` does: XLA's CPU kernels, and so the rounding, match
at, sig = int(sys.argv[1]), getattr(signal, sys.argv[2])
config, workdir = cli.flags.parse_train_flags(sys.argv[3:])
def hook(state, step):
    if step == at:
        os.kill(os.getpid(), sig)
    return {}
train.train(config, workdir, eval_fn=hook)
"""


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device, as a user's CPU run
    return env


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "diffusion_jax", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        cwd=ROOT,
    )


def _signalling_run(at, sig, *args):
    return subprocess.run(
        [sys.executable, "-c", SIGNALLING_RUN, str(at), sig, *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        cwd=ROOT,
    )


def _final_state(workdir, config_overrides=()):
    from diffusion_jax import cli

    config, _ = cli.flags.parse_train_flags(
        ["--config", TINY, "--workdir", str(workdir), *config_overrides]
    )
    mesh = parallel.data_mesh(jax.devices()[:1])
    abstract, _ = init_state(setup.diffusion_parts(config), mesh)
    with checkpoint.Checkpointer(workdir, read_only=True) as ckpt:
        state, _ = ckpt.restore(abstract)
    return jax.device_get(state)


def test_preempted_and_killed_run_resumes_to_the_same_parameters_bit_for_bit(tmp_path):
    steps = ["--config.training.num_steps=8", "--config.training.eval_every=1"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    ran = _cli("train", "--config", TINY, "--workdir", str(straight), *steps)
    assert ran.returncode == 0, ran.stderr[-3000:]

    # eval_every=1: every step is checkpointed before its hook runs. SIGTERM in step 3's hook:
    # the run stops after step 4 with its checkpoint (the last 3 kept), exit 0
    term = _signalling_run(3, "SIGTERM", "--config", TINY, "--workdir", str(broken), *steps)
    assert term.returncode == 0, term.stderr[-3000:]
    assert "stopped by SIGTERM, checkpoint saved at step 4 of 8" in term.stdout
    assert sorted(int(p.name) for p in (broken / "checkpoints").iterdir()) == [2, 3, 4]

    # SIGKILL in step 5's hook (its checkpoint written, the process killed), then to the end
    kill = _signalling_run(5, "SIGKILL", "--config", TINY, "--workdir", str(broken), *steps)
    assert kill.returncode == -signal.SIGKILL
    resumed = _cli("train", "--config", TINY, "--workdir", str(broken), *steps)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = _final_state(straight), _final_state(broken)
    assert int(a.step) == int(b.step) == 8
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real, calls = parallel.global_batch, []

    def poisoned(mesh, local_batch):
        """The real batches, with a NaN in the 5th."""
        calls.append(1)
        if len(calls) == 5:
            local_batch = {**local_batch, "image": local_batch["image"].copy()}
            local_batch["image"][0, 0, 0, 0] = np.nan
        return real(mesh, local_batch)

    monkeypatch.setattr(parallel, "global_batch", poisoned)
    from diffusion_jax import cli

    config, _ = cli.flags.parse_train_flags(["--config", TINY, "--workdir", str(tmp_path)])
    config.unlock().training.num_steps = 8
    with pytest.raises(train.NonFiniteError, match="not finite at step 5"):
        train.train(config, tmp_path)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2, 4]
    state = _final_state(tmp_path)
    assert int(state.step) == 4
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state))


def test_cli_errors_are_clear_and_quick(tmp_path):
    typo = _cli(
        "train", "--config", TINY, "--workdir", str(tmp_path), "--config.training.batch_sze=4"
    )
    assert typo.returncode != 0 and "config.training.batch_size" in typo.stderr
    start = time.time()
    missing = _cli(
        "train",
        "--config",
        str(ROOT / "diffusion_jax/configs/cifar10.py"),
        "--workdir",
        str(tmp_path / "c"),
        f"--config.data.data_dir={tmp_path / 'tfds'}",
    )
    assert missing.returncode == 2 and "prepare-data cifar10" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert time.time() - start < 60
    assert not (tmp_path / "c" / "checkpoints").exists()


def test_toy2d_samples_pass_a_two_sample_test_after_training(tmp_path):
    config = configs.get_config("toy2d")
    # 600 of the config's 2,000 steps: the EMA samples already pass (p ~ 0.8 at 500 steps on
    # one device), and this process simulates 8 devices, which is slower on 2 cores.
    config.training.update(async_checkpoints=False, num_steps=600, checkpoint_every=600)
    state = train.train(config, tmp_path)
    parts = setup.diffusion_parts(config)
    apply_fn = parts.apply_fn
    d = config.diffusion
    from diffusion_jax.core import schedules
    from diffusion_jax.sampling import samplers as sampling

    sched = schedules.make_schedule(d.beta_schedule, d.num_timesteps)

    def draw(params, seed):
        x = sampling.sample_ancestral(
            apply_fn,
            params,
            sched,
            (2000, 2),
            jax.random.key(seed),
            denoiser=sampling.Denoiser(d.mean_type, d.var_type, clip_denoised=False),
        )
        return np.asarray(x)

    truth = data.sample_toy2d(np.random.default_rng(123), 2000)
    _, p_trained = two_sample.mmd_permutation_test(draw(state.ema_params, 1), truth)
    _, p_untrained = two_sample.mmd_permutation_test(draw(parts.init_params(), 1), truth)
    assert p_trained > 0.05, p_trained
    assert p_untrained < 0.05, p_untrained


def test_the_readme_main_job_runs_end_to_end_on_digits(tmp_path):
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    command = next(
        line for line in quickstart.splitlines() if line.startswith("diffusion-jax train")
    )
    args = command.split()[1:]
    args[args.index("--workdir") + 1] = str(tmp_path / "digits")  # not the user's runs/
    short = [
        f"--config.training.{k}" for k in ("num_steps=4", "sample_every=4", "sample_respacing=10")
    ]
    ran = _cli(*args, *short)
    assert ran.returncode == 0, ran.stderr[-3000:]
    from PIL import Image

    grid = Image.open(tmp_path / "digits" / "samples" / "step_00000004.png")
    assert grid.size[0] >= 8 * 8 * 4  # 64 samples, 8 per row, each 8 px enlarged 4x
    assert (tmp_path / "digits" / "checkpoints" / "4").is_dir()
    lines = (tmp_path / "digits" / "metrics.jsonl").read_text().splitlines()
    assert lines and "steps_per_sec" in lines[-1]
