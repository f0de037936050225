"""Training the noise-aware classifier p(y | x_t, t) that classifier guidance differentiates.

    diffusion-jax train-classifier --config experiments/configs/digits_classifier.py \\
        --workdir runs/digits_classifier

    from diffusion_jax.training import classifier as classifier_train
    state = classifier_train.train_classifier(config, "runs/digits_classifier")   # resumes
    module, params = classifier_train.load_classifier("runs/digits_classifier",
                                                      diffusion_config=model_config.diffusion)
    cond_fn = make_classifier_cond_fn(make_classifier_apply_fn(module), params, scale=3.0)

The classifier sees x_t = q_sample(x_0, t, eps) with t ~ U{0, ..., T-1} of `config.diffusion`'s
full schedule (or of its first `classifier.max_timestep` steps: 1 trains on clean images, for a
feature network) and learns the labels by cross-entropy (Dhariwal & Nichol 2021, section 4). The
network is `config.classifier` (see `models/classifier.py`); optimizer and loop settings are
`config.optim` and `config.training`, as for the diffusion model (training.ema_decay = 0 turns
the EMA off: the EMA then equals the parameters). The step has train.py's shape: a pure
`train_step(state, batch)` drawing its numbers from fold_in(state.rng, state.step), jitted with the
state replicated (donated on accelerators) and the batch split along the mesh's 'data' axis.

A guidance classifier is trained for one noise schedule: use it only with a diffusion model of the
same `diffusion.beta_schedule` and `diffusion.num_timesteps` (respaced samplers are fine: they
give the classifier the original timesteps); `load_classifier(..., diffusion_config=...)` checks
this.
The checkpointed config records the resolved `classifier.num_classes` and
`classifier.image_shape`, so `load_classifier` needs neither the dataset nor the config file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffusion_jax import checkpoint, parallel
from diffusion_jax.core import diffusion, schedules
from diffusion_jax.core import timestep_sampling as ts
from diffusion_jax.data import pipeline as data
from diffusion_jax.models.classifier import NoisyClassifier, make_classifier_apply_fn
from diffusion_jax.training import loop, train
from diffusion_jax.training.state import (
    TrainState,
    apply_gradients,
    check_on_nonfinite,
    create_train_state,
    make_optimizer,
)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# classifier.* keys that may change when a run resumes (they do not change the parameters).
_RESUMABLE = frozenset({"classifier.dropout", "classifier.dtype"})
# The diffusion keys that define q(x_t | x_0), hence what the classifier was trained on.
_SCHEDULE_KEYS = ("beta_schedule", "num_timesteps")


# ----------------------------------------------------------------------------- the network


def create_classifier(classifier_config: Any, num_classes: int) -> NoisyClassifier:
    """The `NoisyClassifier` of a `config.classifier` section (a ConfigDict or a dict)."""
    c = classifier_config if isinstance(classifier_config, dict) else classifier_config.to_dict()
    dtype = c.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise ValueError(f"classifier.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
    return NoisyClassifier(
        num_classes=int(num_classes),
        ch=int(c["ch"]),
        ch_mult=tuple(c["ch_mult"]),
        num_res_blocks=int(c["num_res_blocks"]),
        attn_resolutions=tuple(c["attn_resolutions"]),
        dropout=float(c["dropout"]),
        dtype=_DTYPES[dtype],
    )


def max_timestep(classifier_config: Any, num_timesteps: int) -> int:
    """Training draws t ~ U{0, ..., max_timestep - 1}: `classifier.max_timestep`, or all T steps
    when the key is absent or 0. `max_timestep=1` trains on x_0 (t = 0: 1% noise), which is what
    a feature network for FID/KID wants (experiments/configs/digits_features.py)."""
    c = classifier_config if isinstance(classifier_config, dict) else classifier_config.to_dict()
    m = int(c.get("max_timestep", 0) or num_timesteps)
    if not 0 < m <= num_timesteps:
        raise ValueError(
            f"classifier.max_timestep must be in 1..{num_timesteps} (or 0 for all), got {m}."
        )
    return m


def _init_fns(model: NoisyClassifier, tx, example_shape, seed: int, mesh):
    """(abstract_state, init): shapes first (eval_shape), then a jitted, replicated init."""
    init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
    x = jnp.zeros((1, *example_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)

    def init():
        params = model.init({"params": init_key, "dropout": init_key}, x, t)["params"]
        return create_train_state(params, tx, state_key)

    rep = parallel.replicated(mesh)
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), jax.eval_shape(init)
    )
    return abstract, (lambda: jax.jit(init, out_shardings=rep)())


# ----------------------------------------------------------------------------- the step


def make_classifier_train_step(
    classifier_apply: Callable,
    tx: optax.GradientTransformation,
    lr_fn: Callable,
    schedule: schedules.Schedule,
    config,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`train_step(state, batch) -> (state, metrics)`: cross-entropy of p(y | x_t, t).

    batch: {"image": [B, H, W, C] in [-1, 1], "label": [B] int}. t ~ U{0, ..., T-1} and
    x_t = q_sample(x_0, t, eps). A step with a non-finite loss or gradient is not applied (and
    counted in `state.skipped`); with training.on_nonfinite == "error" later steps freeze too,
    and the loop raises naming the step."""
    tr = config.training
    check_on_nonfinite(tr)
    max_t = max_timestep(config.classifier, schedule.num_timesteps)

    def loss_fn(params, x_t, t, y, key):
        logits = classifier_apply(params, x_t, t, rng=key, train=True)  # [B, K]
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        return loss, logits

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        k_t, k_noise, k_drop = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
        x0, y = batch["image"], batch["label"]
        t, _ = ts.sample_uniform(k_t, x0.shape[0], max_t)
        noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
        x_t = diffusion.q_sample(schedule, x0, t, noise)
        (loss, logits), grads = grad_fn(state.params, x_t, t, y, k_drop)

        state, grad_norm, finite = apply_gradients(state, grads, loss, tx, tr)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == y),
            "grad_norm": grad_norm,
            "lr": lr_fn(state.step - 1),
            "finite": finite,
        }
        return state, metrics

    return train_step


# ----------------------------------------------------------------------------- evaluation


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
        x_t = diffusion.q_sample(schedule, x0, t_b, jax.random.normal(key, x0.shape, x0.dtype))
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


# ----------------------------------------------------------------------------- the loop


def _check_config(config) -> None:
    if "classifier" not in config:
        raise ValueError(
            "The config has no classifier section: start from "
            "experiments/configs/digits_classifier.py."
        )
    if not config.data.use_labels:
        raise ValueError("A classifier learns the labels: set config.data.use_labels = True.")


def _resolved_config(config, num_classes: int, example_shape) -> dict:
    """The config as a JSON-able dict, with the classifier's class count and input shape."""
    resolved = json.loads(config.to_json_best_effort())
    resolved["classifier"].update(num_classes=int(num_classes), image_shape=list(example_shape))
    return resolved


def _flat(tree: dict, prefix: str) -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}") if isinstance(v, dict) else {f"{prefix}.{k}": v})
    return out


def _classifier_mismatch(saved: dict, current: dict) -> list[str]:
    """The classifier.* and schedule keys whose values differ between two resolved configs."""
    old = _flat(saved.get("classifier", {}), "classifier")
    new = _flat(current.get("classifier", {}), "classifier")
    for key in _SCHEDULE_KEYS:
        old[f"diffusion.{key}"] = saved.get("diffusion", {}).get(key)
        new[f"diffusion.{key}"] = current.get("diffusion", {}).get(key)
    return [
        f"{k}: checkpoint {old.get(k)!r}, config {new.get(k)!r}"
        for k in sorted(old.keys() | new.keys())
        if k not in _RESUMABLE and old.get(k) != new.get(k)
    ]


def train_classifier(config, workdir: str | Path) -> TrainState:
    """Trains `config.classifier` on noisy `config.data` in `workdir`, resuming if possible.

    Writes workdir/checkpoints (state, data iterator, resolved config), workdir/config.json,
    workdir/metrics.jsonl (loss, accuracy, ...; and eval/accuracy_t{t} every
    training.eval_every steps and at the end, when eval_every > 0) and workdir/tensorboard.
    Returns the final state."""
    _check_config(config)
    parallel.maybe_initialize_distributed()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tr, d = config.training, config.diffusion
    mesh = parallel.data_mesh()
    parallel.check_global_batch(tr.batch_size, mesh)

    info = data.dataset_info(config.data)
    if len(info.shape) != 3:
        raise ValueError(f"The classifier needs images [H, W, C]; {info.name} has {info.shape}.")
    schedule = schedules.make_schedule(d.beta_schedule, d.num_timesteps)
    model = create_classifier(config.classifier, info.num_classes)
    classifier_apply = make_classifier_apply_fn(model)
    tx, lr_fn = make_optimizer(config.optim)
    abstract, init = _init_fns(model, tx, info.shape, config.seed, mesh)
    step_fn = train.compile_train_step(
        make_classifier_train_step(classifier_apply, tx, lr_fn, schedule, config), mesh
    )
    data_iter = data.make_train_iterator(
        config.data, global_batch_size=tr.batch_size, seed=config.seed
    )
    resolved = _resolved_config(config, info.num_classes, info.shape)

    # Accuracy at t = 0 and T/2, or only at t = 0 for a classifier trained on small t only.
    trained_t = max_timestep(config.classifier, d.num_timesteps)
    eval_t = None if trained_t > d.num_timesteps // 2 else (0,)

    def evaluate(state) -> dict[str, float]:
        acc = evaluate_classifier(
            classifier_apply,
            state.ema_params,
            schedule,
            config.data,
            timesteps=eval_t,
            seed=config.seed,
        )
        return {f"eval/{k}": v for k, v in acc.items()}

    ckpt = loop.open_checkpointer(workdir, tr)
    state = loop.resume_or_init(
        ckpt,
        abstract,
        init,
        data_iter,
        mismatch=lambda saved: _classifier_mismatch(saved, resolved),
        what="classifier",
    )
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2))

    def hook(step: int, state, last: bool) -> dict[str, float]:
        if tr.eval_every and (step % tr.eval_every == 0 or last):
            return evaluate(state)
        return {}

    return loop.run_loop(
        state=state,
        step_fn=step_fn,
        data_iter=data_iter,
        mesh=mesh,
        ckpt=ckpt,
        saved_config=resolved,
        training=tr,
        workdir=workdir,
        desc="classifier",
        hook=hook,
    )


# ----------------------------------------------------------------------------- loading


def load_classifier(
    workdir: str | Path,
    *,
    step: int | None = None,
    ema: bool = True,
    diffusion_config: Any = None,
) -> tuple[NoisyClassifier, Any]:
    """(module, params) of the classifier checkpointed in `workdir` (default: latest step).

    `ema` picks the EMA parameters (equal to the parameters when training.ema_decay = 0). Give
    the guided model's `config.diffusion` as `diffusion_config` to check that the classifier was
    trained on the same noise schedule; a mismatch raises ValueError. Parameters land on the
    first local device."""
    with checkpoint.Checkpointer(workdir, read_only=True) as ckpt:
        if ckpt.latest_step() is None:
            raise checkpoint.CheckpointError(
                f"No classifier checkpoint in {Path(workdir) / 'checkpoints'}: train one with "
                "diffusion-jax train-classifier --config ... --workdir " + str(workdir)
            )
        saved = ckpt.restore_config(step)
        c = saved.get("classifier", {})
        if "image_shape" not in c:
            raise checkpoint.CheckpointError(
                f"{workdir} does not hold a classifier run (its config has no resolved "
                "classifier section); was it trained with `diffusion-jax train`?"
            )
        if diffusion_config is not None:
            _check_schedule(saved["diffusion"], diffusion_config, workdir)
        model = create_classifier(c, c["num_classes"])
        tx, _ = make_optimizer(ml_collections.ConfigDict(saved["optim"]))
        mesh = parallel.data_mesh(jax.local_devices()[:1])
        abstract, _ = _init_fns(model, tx, tuple(c["image_shape"]), saved["seed"], mesh)
        state, _ = ckpt.restore(abstract, step=step)
    return model, (state.ema_params if ema else state.params)


def _check_schedule(saved: dict, diffusion_config: Any, workdir) -> None:
    current = diffusion_config if isinstance(diffusion_config, dict) else diffusion_config.to_dict()
    diffs = [
        f"{k}: classifier {saved.get(k)!r}, model {current.get(k)!r}"
        for k in _SCHEDULE_KEYS
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ValueError(
            f"The classifier in {workdir} was trained for another noise schedule "
            f"({'; '.join(diffs)}); a guidance classifier only fits the schedule it was "
            "trained on. Train one with the model's config.diffusion."
        )
