"""Importing a published checkpoint as a run directory that `sample` and `evaluate` read.

    diffusion-jax import-weights --from ddpm-cifar10-32 --out runs/ddpm_cifar10
    importer.import_weights("ddpm-church-256", "runs/church")    # the same, from Python

The run holds an orbax checkpoint at step 0 (params = ema_params = the published EMA weights), a
config.json (the preset of the checkpoint's family: cifar10, celebahq256, lsun_*, updated to its
U-Net, image size and scheduler_config.json) and `imported_from.json` (source, every change).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffusion_jax import configs, setup
from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.core import schedules
from diffusion_jax.pretrained.diffusers import (
    PretrainedError,
    _weights_file,
    convert_unet,
    image_shape,
    read_diffusers_checkpoint,
)
from diffusion_jax.training.state import new_state

PROVENANCE_FILE = "imported_from.json"
# The preset of each checkpoint family, chosen from the folder name.
NAMED_CONFIGS = {"cifar": "cifar10", "celeba": "celebahq256", "celebahq": "celebahq256",
                 "church": "lsun_church", "bedroom": "lsun_bedroom", "cat": "lsun_cat"}  # fmt: skip
DEFAULT_256_CONFIG = "celebahq256"


# diffusers scheduler names -> ours; the betas themselves are compared before they are accepted.
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic",
                   "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}  # fmt: skip
_VAR_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
              "fixed_large": "fixed_large", "fixed_large_log": "fixed_large"}  # fmt: skip
_MEAN_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def find_scheduler_config(model_dir: str | os.PathLike) -> Path | None:
    """The scheduler_config.json that came with the model in `model_dir`, if any."""
    model_dir = Path(model_dir)
    folders = [model_dir, model_dir / "scheduler"]
    if model_dir.name == "unet":  # a pipeline folder: unet/ and scheduler/ side by side
        folders += [model_dir.parent / "scheduler", model_dir.parent]
    return next(
        (f / "scheduler_config.json" for f in folders if (f / "scheduler_config.json").is_file()),
        None,
    )


def _diffusers_betas(name: str, num_timesteps: int, start: float, end: float) -> np.ndarray:
    """The betas diffusers' schedulers compute (float64), to check that ours are the same."""
    if name == "linear":
        return np.linspace(start, end, num_timesteps)
    if name == "scaled_linear":
        return np.linspace(start**0.5, end**0.5, num_timesteps) ** 2
    if name == "sigmoid":
        return start + (end - start) / (1.0 + np.exp(-np.linspace(-6.0, 6.0, num_timesteps)))
    u = np.arange(num_timesteps + 1) / num_timesteps  # squaredcos_cap_v2
    alpha_bar = np.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)


def diffusion_settings(scheduler: Mapping) -> dict[str, Any]:
    """The `config.diffusion` values of a diffusers scheduler config (DDPMScheduler, ...):
    num_timesteps, beta_schedule, mean_type, and var_type when the scheduler names one."""
    steps = int(scheduler.get("num_train_timesteps", 1000))
    name = scheduler.get("beta_schedule", "linear")
    start, end = scheduler.get("beta_start", 1e-4), scheduler.get("beta_end", 0.02)
    prediction = scheduler.get("prediction_type", "epsilon")
    variance = scheduler.get("variance_type")
    bad = []
    if scheduler.get("trained_betas") is not None:
        bad.append("trained_betas (an explicit list of betas)")
    if name not in _BETA_SCHEDULES:
        bad.append(f"beta_schedule={name!r} (supported: {sorted(_BETA_SCHEDULES)})")
    else:
        ours = schedules.get_beta_schedule(_BETA_SCHEDULES[name], steps)
        if not np.allclose(ours, _diffusers_betas(name, steps, start, end), rtol=1e-6, atol=0):
            bad.append(
                f"{name} betas from {start} to {end} over {steps} steps (diffusion_jax's "
                f"{_BETA_SCHEDULES[name]!r} schedule runs from {ours[0]:.4g} to {ours[-1]:.4g})"
            )
    if prediction not in _MEAN_TYPES:
        bad.append(f"prediction_type={prediction!r} (supported: {sorted(_MEAN_TYPES)})")
    if variance is not None and variance not in _VAR_TYPES:
        bad.append(f"variance_type={variance!r} (supported: {sorted(_VAR_TYPES)})")
    if bad:
        raise PretrainedError(
            "scheduler_config.json describes a diffusion diffusion_jax cannot reproduce: "
            + "; ".join(bad)
            + "."
        )
    settings = dict(
        beta_schedule=_BETA_SCHEDULES[name],
        num_timesteps=steps,
        mean_type=_MEAN_TYPES[prediction],
    )
    if variance is not None:
        settings["var_type"] = _VAR_TYPES[variance]
    return settings


def guess_config_name(model_dir: str | os.PathLike, image_size: int) -> str:
    """The preset named by the checkpoint's folder (ddpm-church-256 -> lsun_church), else cifar10
    for 32x32 images and celebahq256 for larger ones."""
    parts = Path(model_dir).absolute().parts  # symlinks kept: their names are the user's
    names = [parts[-1]] + ([parts[-2]] if parts[-1] == "unet" else [])
    if "snapshots" in parts[:-1]:  # the Hugging Face cache: models--google--ddpm-cat-256/...
        names.append(parts[parts.index("snapshots") - 1])
    for token in re.split(r"[^a-z0-9]+", " ".join(names).lower()):
        for key, config_name in NAMED_CONFIGS.items():
            if token == key or (len(key) > 3 and token.startswith(key)):
                return config_name
    return "cifar10" if image_size <= 32 else DEFAULT_256_CONFIG


def load_training_config(name: str):
    """(ConfigDict, file) of a preset name or a config file's path."""
    try:
        file = configs.config_file(name)
    except ValueError as e:
        raise PretrainedError(str(e)) from None
    return configs.get_config(name), file


def _set(section, updates: Mapping[str, Any], prefix: str, changes: list[str]) -> None:
    for key, value in updates.items():
        old = section[key]
        if isinstance(old, list | tuple):
            value = type(old)(value)  # a ConfigDict field keeps its type
        if old != value:
            changes.append(f"{prefix}.{key}: {old!r} -> {value!r}")
        section[key] = value


def imported_config(checkpoint_config: Mapping, unet_kwargs: Mapping, scheduler, name: str):
    """(training ConfigDict, its file, changes made): the named experiment config with the
    checkpoint's architecture, image size and (if given) scheduler settings."""
    config, file = load_training_config(name)
    changes: list[str] = []
    structural = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resamp_with_conv")
    _set(config.model, {k: unet_kwargs[k] for k in structural}, "model", changes)
    _set(config.model, dict(name="unet", num_classes=0), "model", changes)
    _set(config.data, dict(image_size=image_shape(checkpoint_config)[0]), "data", changes)
    if scheduler is not None:
        _set(config.diffusion, diffusion_settings(scheduler), "diffusion", changes)
    return config, file, changes


def _train_state(config, params, shape):
    """A TrainState at step 0 whose params and EMA are both `params` (fresh optimizer state)."""
    parts = setup.diffusion_parts(config, example_shape=shape)
    # One compiled function: building the optimizer state leaf by leaf compiles once per shape.
    return jax.jit(lambda p: new_state(parts, p))(params)


def _refuse_existing(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PretrainedError(
            f"{out} already exists and is not empty; importing never overwrites a run. Choose "
            "another --out, or delete it first."
        )


def import_weights(
    src: str | os.PathLike, out: str | os.PathLike, *, config_name: str | None = None
) -> Path:
    """Writes run `out` (see above) of the checkpoint at `src`, config `config_name` (preset or .py;
    default `guess_config_name`), atomically (temp dir + rename); a non-empty `out` is refused."""
    out = Path(out)
    _refuse_existing(out)
    weights = _weights_file(Path(src))
    checkpoint_config, tensors = read_diffusers_checkpoint(weights)
    kwargs, params = convert_unet(checkpoint_config, tensors)
    del tensors
    shape = image_shape(checkpoint_config)
    scheduler_file = find_scheduler_config(weights.parent)
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file else None
    name = config_name or guess_config_name(weights.parent, shape[0])
    config, config_file, changes = imported_config(checkpoint_config, kwargs, scheduler, name)
    state = _train_state(config, params, shape)
    provenance = dict(
        source=str(weights.absolute()),
        diffusers_version=checkpoint_config.get("_diffusers_version"),
        scheduler_config=str(scheduler_file.absolute()) if scheduler_file else None,
        training_config=str(config_file),
        changes=changes,
        unet={k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        image_shape=list(shape),
        num_params=int(sum(p.size for p in jax.tree_util.tree_leaves(params))),
        step=0,
        note="params and ema_params are both the imported weights (published as EMA weights)",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent))
    try:
        with Checkpointer(tmp, async_save=False) as ckpt:
            ckpt.save(0, state, config, force=True)
        (tmp / "config.json").write_text(config.to_json_best_effort(indent=2))
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
        _refuse_existing(out)  # another process may have written it meanwhile
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
