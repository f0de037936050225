"""Drawing samples from a trained run: N samples in chunks, sharded over every device, to a uint8
.npz (the format FID tools read) and a PNG grid.

With several processes (`diffusion-jax sample` launched on every host), each process draws its
share of the chunks on its own devices and the samples are gathered once at the end; chunk i
always uses the key fold_in(PRNGKey(seed), i), so the set does not depend on the number of
processes (for a batch size that the per-process device count divides). Only process 0 writes.

    run = generate.load_run("runs/digits_cond")                  # config + EMA parameters
    images, labels = generate.generate(run, num=1000, sampler="ddim", steps=50, cfg_scale=1.0)
    generate.save_samples(images, labels, "samples.npz", grid="samples.png")

`diffusion-jax sample --workdir runs/X --num 50000 --sampler ddim --steps 50 --out samples.npz`
does the same from the command line. Sampling uses the EMA parameters unless asked otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import checkpoint, parallel
from diffusion_jax.core import schedules
from diffusion_jax.core.diffusion import learns_variance
from diffusion_jax.data import images
from diffusion_jax.models import make_apply_fn
from diffusion_jax.models.factory import create_model
from diffusion_jax.sampling import samplers as sampling
from diffusion_jax.training import train
from diffusion_jax.training.state import make_optimizer

SPACINGS = {"uniform": "{n}", "ddim": "ddim{n}", "quad": "ddimq{n}"}


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run, ready to sample: its config, network, parameters and data shape."""

    config: ml_collections.ConfigDict
    apply_fn: Callable
    params: Any
    shape: tuple[int, ...]
    step: int
    ema: bool

    @property
    def num_classes(self) -> int:
        return int(self.config.model.num_classes)


def load_run(workdir: str | Path, *, step: int | None = None, use_ema: bool = True) -> Run:
    """Restores a run's parameters (the EMA ones unless `use_ema=False`) from its checkpoints,
    as a full copy on this process's devices (every process of a multi-process job reads the
    checkpoint together)."""
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        if ckpt.latest_step() is None:
            raise checkpoint.CheckpointError(
                f"No checkpoint in {Path(workdir) / 'checkpoints'}: train first with "
                f"`diffusion-jax train --config ... --workdir {workdir}`."
            )
        config = ml_collections.ConfigDict(ckpt.restore_config(step))
        from diffusion_jax.data import pipeline as data

        shape = tuple(data.example_shape(config.data))
        model = create_model(config, shape)
        tx, _ = make_optimizer(config.optim)
        mesh = parallel.make_mesh()
        abstract, _ = train.init_train_state(
            config, model, tx, shape, mesh, num_classes=int(config.model.num_classes)
        )
        state, _ = ckpt.restore(abstract, step=step)
    finally:
        ckpt.close()
    params = parallel.to_local(state.ema_params if use_ema else state.params)
    return Run(config, make_apply_fn(model), params, shape, int(state.step), use_ema)


def with_var_type(run: Run, var_type: str) -> Run:
    """`run` sampling (and bounding) with the fixed variance `var_type` instead of its own.

    The variance of a network trained with a fixed one is a choice made at sampling time: DDPM
    sampled CIFAR-10 with "fixed_large" (beta_t) and its 256x256 models with "fixed_small" (the
    posterior's), while the scheduler files published with their weights say "fixed_small" for
    all of them. A network that learned its variance keeps it."""
    if var_type not in ("fixed_small", "fixed_large"):
        raise ValueError(f"var_type must be 'fixed_small' or 'fixed_large', got {var_type!r}.")
    if learns_variance(run.config.diffusion.var_type):
        raise ValueError(
            f"This run learned its variance ({run.config.diffusion.var_type}); a fixed "
            f"{var_type} would ignore half of the network's output. Drop --var_type."
        )
    config = ml_collections.ConfigDict(run.config.to_dict())
    config.diffusion.var_type = var_type
    return dataclasses.replace(run, config=config)


def sampling_schedule(config, steps: int = 0, spacing: str = "uniform") -> schedules.Schedule:
    """The run's schedule, respaced to `steps` steps (0: all of them) with `spacing`: "uniform"
    (evenly spaced, both ends kept), "ddim" (integer stride from 0) or "quad" (DDIM's quadratic)."""
    d = config.diffusion
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {sorted(SPACINGS)}, got {spacing!r}.")
    respacing = None if not steps or steps == d.num_timesteps else SPACINGS[spacing].format(n=steps)
    return schedules.make_schedule(d.beta_schedule, d.num_timesteps, respacing=respacing)


def _labels(run: Run, num: int, classes: Sequence[int] | None, unconditional: bool, guided: bool):
    if not run.num_classes:
        if unconditional or (classes and not guided):
            raise ValueError(
                "This run is unconditional: drop --classes / --unconditional (or add a "
                "classifier to guide it towards --classes)."
            )
        if guided:
            if not classes:
                raise ValueError("Classifier guidance of an unconditional run needs --classes.")
            return np.asarray(classes, np.int32)[np.arange(num) % len(classes)]
        return None
    if unconditional:
        return np.full(num, run.num_classes, np.int32)  # the null label
    pool = np.asarray(classes if classes else range(run.num_classes), np.int32)
    if pool.min() < 0 or pool.max() >= run.num_classes:
        raise ValueError(f"Classes must lie in [0, {run.num_classes}), got {pool.tolist()}.")
    return pool[np.arange(num) % len(pool)]


def generate(
    run: Run,
    *,
    num: int,
    sampler: str = "ancestral",
    steps: int = 0,
    spacing: str = "uniform",
    eta: float = 0.0,
    cfg_scale: float | None = None,
    classes: Sequence[int] | None = None,
    unconditional: bool = False,
    cond_fn: Callable | None = None,
    classifier_scale: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`num` samples of `run`: images as uint8 [N, H, W, C] (vector data as float32), and labels.

    Chunks of `batch_size` (rounded up to a multiple of the local device count) are sharded over
    every device of a process; chunk i uses the key fold_in(PRNGKey(seed), i), so a seed
    reproduces a set. With several processes, process p draws the p-th contiguous block of the
    chunks and every process returns all the samples (gathered once)."""
    if sampler not in ("ancestral", "ddim"):
        raise ValueError(f"sampler must be 'ancestral' or 'ddim', got {sampler!r}.")
    if cfg_scale is not None and not run.num_classes:
        raise ValueError(
            "Classifier-free guidance needs a class-conditional run (model.num_classes)."
        )
    d = run.config.diffusion
    sched = sampling_schedule(run.config, steps, spacing)
    labels = _labels(run, num, classes, unconditional, guided=cond_fn is not None)
    apply_fn = run.apply_fn
    if labels is not None and not run.num_classes:
        # The labels are for the guiding classifier; the unconditional network takes none.
        def apply_fn(params, x_t, t, y=None, **kwargs):
            return run.apply_fn(params, x_t, t, None, **kwargs)

    mesh = parallel.local_mesh()
    params = parallel.to_local(run.params, mesh)
    chunk = -(-min(batch_size, num) // mesh.size) * mesh.size
    is_image = len(run.shape) == 3
    kw = dict(
        mean_type=d.mean_type,
        var_type=d.var_type,
        clip_denoised=is_image,
        cfg_scale=cfg_scale,
        num_classes=run.num_classes or None,
        cond_fn=cond_fn,
        classifier_scale=classifier_scale,
    )
    if sampler == "ddim":
        kw["eta"] = eta
    sample_fn = sampling.sample_ddim if sampler == "ddim" else sampling.sample_ancestral

    @jax.jit
    def draw(params, key, y):
        x = sample_fn(apply_fn, params, sched, (chunk, *run.shape), key, y=y, **kw)
        return jax.lax.with_sharding_constraint(x, parallel.batch_sharding(mesh))

    from tqdm.auto import tqdm

    out, base = [], jax.random.PRNGKey(seed)
    num_chunks = -(-num // chunk)
    mine = np.array_split(np.arange(num_chunks), jax.process_count())[jax.process_index()]
    show = progress and parallel.is_main_process()
    for i in tqdm(mine.tolist(), desc=f"sampling ({sampler})", disable=not show):
        y = None
        if labels is not None:
            y = jnp.asarray(np.resize(labels[i * chunk : (i + 1) * chunk], chunk))
        x = draw(params, jax.random.fold_in(base, i), y)
        out.append(np.asarray(jax.device_get(x)))
    local = np.concatenate(out) if out else np.zeros((0, *run.shape), np.float32)
    samples = parallel.allgather_rows(local)[:num]
    return (images.to_uint8(samples) if is_image else samples), labels


def save_samples(samples, labels, out: str | Path, grid: str | Path | None = None) -> Path:
    """Writes `out` (.npz with arr_0 = the samples, and labels when conditional) and a grid."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": samples} | ({"labels": labels} if labels is not None else {})
    np.savez(out, **arrays)
    if grid is not None and samples.ndim == 4:
        images.save_grid(samples[:64], grid)
    return out
