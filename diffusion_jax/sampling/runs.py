"""Loading a run for inference: its config and the parameters sampling needs, nothing more.

    run = runs.load_run("runs/digits_cond")                 # config + EMA parameters
    run = runs.with_var_type(run, "fixed_small")            # sample with another fixed variance
    module, params = runs.load_classifier("runs/digits_classifier",
                                          diffusion_config=run.config.diffusion)

Only the step and the EMA (or raw) parameters are restored, not the optimizer moments (twice their
size), as a full copy on each process's devices; all processes of a job read them together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from diffusion_jax import checkpoint, parallel, setup
from diffusion_jax.core.diffusion import learns_variance

# The diffusion keys that define q(x_t | x_0), hence what a guidance classifier was trained on.
SCHEDULE_KEYS = ("beta_schedule", "num_timesteps")


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


def read_params(
    ckpt: checkpoint.Checkpointer, parts: setup.Parts, *, step: int | None, ema: bool = True
) -> tuple[Any, int]:
    """(params, step) of checkpoint `step` (None: latest): EMA or (`ema=False`) raw params only,
    shaped as `parts` says, replicated over this process's devices."""
    rep = parallel.replicated(parallel.local_mesh())
    key = "ema_params" if ema else "params"
    target = {"step": jax.ShapeDtypeStruct((), jnp.int32), key: parts.abstract_params()}
    target = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), target
    )
    state, _ = ckpt.restore(target, step=step, partial=True)
    return state[key], int(state["step"])


def open_run(workdir: str | Path, command: str) -> checkpoint.Checkpointer:
    """`workdir`'s checkpoints, read-only, or a CheckpointError naming the command to make them."""
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    if ckpt.latest_step() is None:
        ckpt.close()
        raise checkpoint.CheckpointError(
            f"No checkpoint in {Path(workdir) / 'checkpoints'}: train first with "
            f"`diffusion-jax {command} --config ... --workdir {workdir}`."
        )
    return ckpt


def load_run(workdir: str | Path, *, step: int | None = None, use_ema: bool = True) -> Run:
    """The run in `workdir` at `step` (default: latest), with EMA params unless `use_ema=False`."""
    with open_run(workdir, "train") as ckpt:
        config = ml_collections.ConfigDict(ckpt.restore_config(step))
        parts = setup.diffusion_parts(config)
        params, at = read_params(ckpt, parts, step=step, ema=use_ema)
    return Run(config, parts.apply_fn, params, parts.example_shape, at, use_ema)


def with_var_type(run: Run, var_type: str) -> Run:
    """`run` sampling (and bounding) with fixed variance `var_type`, a sampling-time choice: DDPM
    used "fixed_large" (beta_t) for CIFAR-10 and "fixed_small" (the posterior's) at 256x256, though
    its published scheduler files all say "fixed_small". Refused if the network learned its own."""
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


def load_classifier(
    workdir: str | Path,
    *,
    step: int | None = None,
    ema: bool = True,
    diffusion_config: Any = None,
) -> tuple[Any, Any]:
    """(module, params) of the classifier checkpointed in `workdir` (default: latest step); `ema`
    params equal the raw ones when training.ema_decay = 0. With the guided model's config.diffusion
    as `diffusion_config`, a classifier trained on another noise schedule raises ValueError."""
    with open_run(workdir, "train-classifier") as ckpt:
        saved = ckpt.restore_config(step)
        c = saved.get("classifier", {})
        if "image_shape" not in c:
            raise checkpoint.CheckpointError(
                f"{workdir} does not hold a classifier run (its config has no resolved "
                "classifier section); was it trained with `diffusion-jax train`?"
            )
        if diffusion_config is not None:
            _check_schedule(saved["diffusion"], diffusion_config, workdir)
        config, shape = ml_collections.ConfigDict(saved), tuple(c["image_shape"])
        parts = setup.classifier_parts(config, num_classes=c["num_classes"], example_shape=shape)
        params, _ = read_params(ckpt, parts, step=step, ema=ema)
    return parts.model, params


def _check_schedule(saved: dict, diffusion_config: Any, workdir) -> None:
    current = diffusion_config if isinstance(diffusion_config, dict) else diffusion_config.to_dict()
    diffs = [
        f"{k}: classifier {saved.get(k)!r}, model {current.get(k)!r}"
        for k in SCHEDULE_KEYS
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ValueError(
            f"The classifier in {workdir} was trained for another noise schedule "
            f"({'; '.join(diffs)}); a guidance classifier only fits the schedule it was "
            "trained on. Train one with the model's config.diffusion."
        )
