"""Sampling from a trained run: the `sample` command, labels, guidance options, reproducibility."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffusion_jax import cli
from diffusion_jax.sampling import generate, runs
from diffusion_jax.training import train

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny"


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cond")
    overrides = [
        "--config.model.num_classes=10",
        "--config.data.use_labels=True",
        "--config.diffusion.class_drop_prob=0.1",
        "--config.training.num_steps=2",
    ]
    config, _ = cli.flags.parse_train_flags(
        ["--config", TINY, "--workdir", str(workdir), *overrides]
    )
    train.train(config, workdir)
    return workdir


def test_sample_command_writes_uint8_npz_labels_and_grid(cond_run):
    out = cond_run / "s.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    args = ["--workdir", str(cond_run), "--num", "5", "--sampler", "ddim", "--steps", "5"]
    args += ["--guidance", "1.0", "--classes", "3,5", "--batch_size", "2", "--out", str(out)]
    ran = subprocess.run(
        [sys.executable, "-m", "diffusion_jax", "sample", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "EMA" in ran.stdout and "step 2" in ran.stdout
    saved = np.load(out)
    assert saved["arr_0"].dtype == np.uint8 and saved["arr_0"].shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(saved["labels"], [3, 5, 3, 5, 3])
    assert out.with_suffix(".png").is_file()


def test_generate_reproduces_a_seed_and_uses_ema_unless_told(cond_run):
    run = runs.load_run(cond_run)
    raw = runs.load_run(cond_run, use_ema=False)
    assert run.ema and not raw.ema and run.step == 2
    kw = dict(num=6, sampler="ddim", steps=4, classes=[1], progress=False)
    a, labels = generate.generate(run, seed=3, **kw)
    b, _ = generate.generate(run, seed=3, **kw)
    c, _ = generate.generate(run, seed=4, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(labels, 1)
    null, null_labels = generate.generate(run, num=3, steps=4, unconditional=True, progress=False)
    np.testing.assert_array_equal(null_labels, 10)  # the null label of a 10-class model


def test_bad_requests_are_refused(cond_run):
    run = runs.load_run(cond_run)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        generate.generate(run, num=2, classes=[12], progress=False)
    with pytest.raises(ValueError, match="sampler"):
        generate.generate(run, num=2, sampler="euler", progress=False)
    config = run.config.copy_and_resolve_references()
    config.model.num_classes = 0
    uncond = dataclasses.replace(run, config=config)
    with pytest.raises(ValueError, match="class-conditional"):
        generate.generate(uncond, num=2, cfg_scale=1.0, progress=False)
    with pytest.raises(ValueError, match="needs --classes"):
        generate.generate(uncond, num=2, cond_fn=lambda x, t, y: x, progress=False)
    with pytest.raises(Exception, match="No checkpoint"):
        runs.load_run(cond_run / "nothing-here")


def test_var_type_is_chosen_at_sampling_time(cond_run):
    """DDPM sampled CIFAR-10 with fixed_large: a fixed-variance run can sample with either."""
    run = runs.load_run(cond_run)
    assert run.config.diffusion.var_type == "fixed_large"  # tiny.py's
    small = runs.with_var_type(run, "fixed_small")
    assert small.config.diffusion.var_type == "fixed_small" and small.params is run.params
    assert run.config.diffusion.var_type == "fixed_large"  # the original is left alone
    kw = dict(num=4, sampler="ancestral", steps=5, classes=[2], seed=1, progress=False)
    large_x, _ = generate.generate(run, **kw)
    again, _ = generate.generate(runs.with_var_type(small, "fixed_large"), **kw)
    small_x, _ = generate.generate(small, **kw)
    np.testing.assert_array_equal(large_x, again)
    assert not np.array_equal(large_x, small_x)
    with pytest.raises(ValueError, match="fixed_small' or 'fixed_large"):
        runs.with_var_type(run, "learned")
    config = run.config.copy_and_resolve_references()
    config.diffusion.var_type = "learned_range"
    with pytest.raises(ValueError, match="learned its variance"):
        runs.with_var_type(dataclasses.replace(run, config=config), "fixed_small")
