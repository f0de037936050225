"""Training a diffusion model: `train(config, workdir)`, data-parallel over every device of every
host, resuming from the run's latest checkpoint.

    from diffusion_jax.training import train
    state = train.train(config, "runs/cifar10")   # resumes from runs/cifar10/checkpoints

Writes workdir/checkpoints (orbax: state, data iterator, config), config.json, metrics.jsonl,
tensorboard/ and samples/. The state is replicated, or with training.fsdp > 1 split over the
mesh's 'fsdp' axis (the same update, 1/fsdp of the state per device). SIGTERM or Ctrl-C:
checkpoint, return.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffusion_jax import parallel, setup, validation
from diffusion_jax.data import pipeline as data
from diffusion_jax.errors import ConfigError
from diffusion_jax.training import hooks, loop, step
from diffusion_jax.training.loop import NonFiniteError  # noqa: F401 (part of this module's API)


def check_batch(training: Any, mesh) -> None:
    """The global batch must split over the devices, and into grad_accum_steps micro-batches that
    each split over the devices (a ConfigError otherwise)."""
    try:
        parallel.check_global_batch(training.batch_size, mesh)
    except ValueError as e:
        raise ConfigError(f"training.batch_size: {e}") from None
    accum = training.grad_accum_steps
    if training.batch_size % accum or (training.batch_size // accum) % mesh.size:
        raise ConfigError(
            f"training.batch_size={training.batch_size} must split into grad_accum_steps="
            f"{accum} micro-batches that each split over {mesh.size} devices."
        )


def train(
    config: Any,
    workdir: str | Path,
    *,
    eval_fn: Callable | None = None,
    allow_changes: bool = False,
) -> Any:
    """Trains `config` in `workdir`; returns the final TrainState. Every config value is checked
    first (`validation.validate`: a ConfigError names the key). `eval_fn(state, step) -> dict`
    runs every training.eval_every steps (its scalars are logged); by default it is what
    `config.eval` asks for (`hooks.make_eval_fn`). `allow_changes`: resume although the data,
    batch or seed changed (`resume.ResumeRules`)."""
    validation.validate(config, kind="diffusion")
    parallel.maybe_initialize_distributed()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh(config.training.get("fsdp", 1))
    check_batch(config.training, mesh)
    info = data.dataset_info(config.data)  # the dataset must be there to train on it
    if 0 < config.model.num_classes < info.num_classes:  # a larger label would be clamped
        raise ConfigError(
            f"model.num_classes={config.model.num_classes} is fewer than the "
            f"{info.num_classes} classes of {info.name}: set it to {info.num_classes}."
        )
    parts = setup.diffusion_parts(config, info.shape)
    return loop.fit(
        parts,
        mesh,
        workdir,
        make_step=step.make_train_step,
        saved_config=config,
        allow_changes=allow_changes,
        hook=hooks.training_hook(parts, workdir, eval_fn),
    )
