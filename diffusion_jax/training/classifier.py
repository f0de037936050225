"""Training the noise-aware classifier p(y | x_t, t) that classifier guidance differentiates.

    diffusion-jax train-classifier --config digits_classifier --workdir runs/digits_classifier

    from diffusion_jax.training import classifier
    state = classifier.train_classifier(config, "runs/digits_classifier")   # resumes
    # to guide with it: sampling.runs.load_classifier(workdir, diffusion_config=...)

The classifier (`config.classifier`) learns the labels of x_t = q_sample(x_0, t, eps) by
cross-entropy, t ~ U{0, ..., T-1} of `config.diffusion`'s schedule or of its first
`classifier.max_timestep` steps (1: clean images, for a feature network) (Dhariwal & Nichol 2021,
sec. 4); `config.optim`, `config.training` and the loop are the diffusion model's (ema_decay = 0:
EMA = parameters). It fits one noise schedule only (same beta_schedule and num_timesteps; respaced
samplers are fine). The checkpointed config records the resolved `classifier.num_classes` and
`image_shape`, so loading it needs neither the dataset nor the config file.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parallel, setup, validation
from diffusion_jax.core import diffusion, schedules
from diffusion_jax.data import pipeline as data
from diffusion_jax.sampling.runs import SCHEDULE_KEYS
from diffusion_jax.training import loop, step
from diffusion_jax.training.resume import ResumeRules

# classifier.* keys that may change when a run resumes (they do not change the parameters).
_RESUMABLE = frozenset({"classifier.dropout", "classifier.dtype"})


def max_timestep(classifier_config: Any, num_timesteps: int) -> int:
    """Training draws t ~ U{0, ..., max_timestep - 1}: `classifier.max_timestep`, or all T steps
    when the key is absent or 0. `max_timestep=1` trains on x_0 (t = 0: 1% noise), which is what
    a feature network for FID/KID wants (diffusion_jax/configs/digits_features.py)."""
    c = classifier_config if isinstance(classifier_config, dict) else classifier_config.to_dict()
    m = int(c.get("max_timestep", 0) or num_timesteps)
    if not 0 < m <= num_timesteps:
        raise ValueError(
            f"classifier.max_timestep must be in 1..{num_timesteps} (or 0 for all), got {m}."
        )
    return m


def evaluate_classifier(
    classifier_apply: Callable,
    params: Any,
    schedule: schedules.Schedule,
    data_config: Any,
    *,
    timesteps: Sequence[int] | None = None,
    batch_size: int = 256,
    split: str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy on the held-out split at fixed noise levels: {"accuracy_t{t}": float, ...}.

    `timesteps` default to (0, T // 2) of `schedule` (the full schedule the classifier was
    trained with); x_t = q_sample(x_0, t, eps) with eps drawn from `seed`, so repeated calls
    agree. Every process reads the whole split (the split is small; the answer is the same)."""
    if timesteps is None:
        timesteps = (0, schedule.num_timesteps // 2)

    @jax.jit
    def correct(params, x0, y, t, key):
        t_b = jnp.full((x0.shape[0],), t, jnp.int32)
        noise = jax.random.normal(key, x0.shape, x0.dtype)
        x_t = diffusion.q_sample(schedule, x0, t_b, noise=noise)
        return jnp.argmax(classifier_apply(params, x_t, t_b), axis=-1) == y  # [B] bool

    totals = dict.fromkeys(timesteps, 0)
    count = 0
    batches = data.make_eval_iterator(
        data_config, batch_size=batch_size, split=split, process_index=0, process_count=1
    )
    for i, batch in enumerate(batches):
        n = len(batch["label"])
        # Pad the last, short batch so that every batch has one compiled shape.
        x0 = np.zeros((batch_size, *batch["image"].shape[1:]), np.float32)
        y = np.full((batch_size,), -1, np.int32)
        x0[:n], y[:n] = batch["image"], batch["label"]
        for t in timesteps:
            key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), t), i)
            ok = np.asarray(correct(params, x0, y, t, key))
            totals[t] += int(ok[:n].sum())
        count += n
    if count == 0:
        raise ValueError("The evaluation split is empty.")
    return {f"accuracy_t{t}": totals[t] / count for t in timesteps}


def _check_config(config) -> None:
    if "classifier" not in config:
        raise ValueError(
            "The config has no classifier section: start from "
            "diffusion_jax/configs/digits_classifier.py."
        )
    if not config.data.use_labels:
        raise ValueError("A classifier learns the labels: set config.data.use_labels = True.")


def _resolved_config(config, num_classes: int, example_shape) -> dict:
    """The config as a JSON-able dict, with the classifier's class count and input shape."""
    resolved = json.loads(config.to_json_best_effort())
    resolved["classifier"].update(num_classes=int(num_classes), image_shape=list(example_shape))
    return resolved


def train_classifier(config: Any, workdir: str | Path, *, allow_changes: bool = False) -> Any:
    """Trains `config.classifier` on `config.data` in `workdir`, resuming if possible.

    Writes workdir/checkpoints (state, data iterator, resolved config), workdir/config.json,
    workdir/metrics.jsonl (loss, accuracy, ...; and eval/accuracy_t{t} every
    training.eval_every steps and at the end, when eval_every > 0) and workdir/tensorboard.
    Returns the final state. `allow_changes`: resume although the data, batch or seed changed
    (`resume.ResumeRules`)."""
    _check_config(config)
    validation.validate(config, kind="classifier")
    parallel.maybe_initialize_distributed()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tr, d = config.training, config.diffusion
    mesh = parallel.data_mesh()
    parallel.check_global_batch(tr.batch_size, mesh)
    info = data.dataset_info(config.data)
    if len(info.shape) != 3:
        raise ValueError(f"The classifier needs images [H, W, C]; {info.name} has {info.shape}.")
    parts = setup.classifier_parts(config, num_classes=info.num_classes, example_shape=info.shape)
    resolved = _resolved_config(config, info.num_classes, info.shape)
    # Accuracy at t = 0 and T/2, or only at t = 0 for a classifier trained on small t only.
    trained_t = max_timestep(config.classifier, d.num_timesteps)
    eval_t = None if trained_t > d.num_timesteps // 2 else (0,)

    def due(step_: int, last: bool) -> bool:
        return bool(tr.eval_every) and (step_ % tr.eval_every == 0 or last)

    def run(step_: int, state, last: bool) -> dict[str, float]:
        acc = evaluate_classifier(
            parts.apply_fn, state.ema_params, parts.schedule, config.data, timesteps=eval_t,
            seed=config.seed,
        )  # fmt: skip
        return {f"eval/{k}": v for k, v in acc.items()}

    fixed = ("classifier", *(f"diffusion.{k}" for k in SCHEDULE_KEYS))
    return loop.fit(
        parts,
        mesh,
        workdir,
        make_step=functools.partial(step.make_classifier_train_step, max_timestep=trained_t),
        saved_config=resolved,
        rules=ResumeRules(fixed=fixed, resumable=_RESUMABLE, what="classifier"),
        allow_changes=allow_changes,
        hook=loop.Hook(due=due, run=run),
    )
