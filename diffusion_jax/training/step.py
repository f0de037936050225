"""The pure train steps and their compilation over a device mesh.

    parts = setup.diffusion_parts(config)
    train_step = step.make_train_step(parts)                 # (state, batch) -> (state, metrics)
    state, metrics = train_step(state, {"image": x0})        # pure: jit it, shard it, test it
    compiled = step.compile_train_step(train_step, mesh, state_sharding)

A step draws every random number from fold_in(state.rng, state.step), split once per purpose
(timesteps, noise, dropout, label dropping), so a run restarted from a checkpoint replays the same
numbers, and the global batch gives the same update on 1 device or 8, on 1 host or 2. The config
is read once, when the step is built: the jitted step sees plain values only. To train your own
network, replace it in the parts: `dataclasses.replace(parts, model=m, apply_fn=my_apply_fn)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from diffusion_jax import parallel
from diffusion_jax.core import diffusion, losses
from diffusion_jax.core import timestep_sampling as ts
from diffusion_jax.training.state import TrainState, apply_gradients

Step = Callable[[TrainState, dict], tuple[TrainState, dict]]


def _split_micro(x: jax.Array, accum: int) -> jax.Array:
    """[B, ...] -> [accum, B / accum, ...], micro-batch i = rows i, i + accum, ...

    Taking every accum-th row keeps each device's rows on that device when B is sharded."""
    return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)


def accumulate(grad_fn: Callable, params: Any, inputs: tuple, key: jax.Array, accum: int):
    """((mean loss, per-example aux [B]), mean gradient) of `grad_fn(params, *inputs, key)` over
    `accum` micro-batches of the batch-major `inputs` (None entries pass through): the gradient is
    the sum over micro-batches divided by `accum`, so it equals the whole batch's gradient."""
    if accum == 1:
        return grad_fn(params, *inputs, key)
    micro = [None if a is None else _split_micro(a, accum) for a in inputs]

    def body(grad_sum, i):
        (li, aux_i), gi = grad_fn(
            params, *(None if a is None else a[i] for a in micro), jax.random.fold_in(key, i)
        )
        return jax.tree_util.tree_map(jnp.add, grad_sum, gi), (li, aux_i)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    grads, (micro_loss, micro_aux) = jax.lax.scan(body, zeros, jnp.arange(accum))
    batch = inputs[0].shape[0]
    # back to batch order: [accum, B / accum] -> [B]
    aux = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1).reshape(batch), micro_aux)
    grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
    return (jnp.mean(micro_loss), aux), grads


def _update_kwargs(training: Any) -> dict:
    """`apply_gradients`' plain settings from `config.training`."""
    return dict(
        ema_decay=float(training.ema_decay),
        ema_warmup=bool(training.ema_warmup),
        on_nonfinite=str(training.on_nonfinite),
    )


def make_train_step(parts: Any) -> Step:
    """The diffusion model's `train_step(state, batch) -> (state, metrics)` for `parts`
    (`setup.diffusion_parts`): `config.diffusion`'s loss on batch {"image": [B, ...] in [-1, 1],
    "label": [B] int (class-conditional models only)}, with `training.grad_accum_steps`
    micro-batches. A step whose loss or gradient is not finite is not applied and counts in
    `state.skipped` (`state.apply_gradients`)."""
    d, tr = parts.config.diffusion, parts.config.training
    accum, num_classes, drop = int(tr.grad_accum_steps), parts.num_classes, float(d.class_drop_prob)
    importance = d.timestep_sampler == "importance"
    if d.timestep_sampler not in ("uniform", "importance"):
        raise ValueError(
            "diffusion.timestep_sampler must be 'uniform' or 'importance', got "
            f"{d.timestep_sampler!r}."
        )
    loss_kw = dict(loss_type=d.loss_type, mean_type=d.mean_type, var_type=d.var_type)
    update_kw = _update_kwargs(tr)
    apply_fn, schedule, tx = parts.apply_fn, parts.schedule, parts.tx

    def loss_fn(params, x0, y, t, weights, noise, key):
        terms = losses.training_losses(
            apply_fn, params, schedule, x0, t, noise=noise, y=y, rng=key, train=True, **loss_kw
        )
        return jnp.mean(terms["loss"] * weights), terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
        k_t, k_noise, k_drop, k_label = keys
        x0 = batch["image"]
        b = x0.shape[0]
        if importance:
            t, weights = ts.sample_importance(k_t, b, state.loss_history)
        else:
            t, weights = ts.sample_uniform(k_t, b, schedule.num_timesteps)
        noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
        y = batch.get("label") if num_classes else None
        if y is not None and drop > 0:
            y = jnp.where(jax.random.bernoulli(k_label, drop, (b,)), num_classes, y)
        inputs = (x0, y, t, weights, noise)
        (loss, terms), grads = accumulate(grad_fn, state.params, inputs, k_drop, accum)
        history = state.loss_history
        if importance:
            history = ts.update_loss_history(history, t, terms["loss"])
        state, grad_norm, finite = apply_gradients(
            state, grads, loss, tx, loss_history=history, **update_kw
        )
        means = {f"{k}_mean": jnp.mean(v) for k, v in terms.items() if k != "loss"}
        return state, _metrics(loss, grad_norm, parts.lr_fn(state.step - 1), finite) | means

    return train_step


def make_classifier_train_step(parts: Any, max_timestep: int) -> Step:
    """The noise-aware classifier's `train_step(state, batch) -> (state, metrics)` for `parts`
    (`setup.classifier_parts`): cross-entropy of p(y | x_t, t) on batch {"image": [B, H, W, C] in
    [-1, 1], "label": [B] int}, with t ~ U{0, ..., max_timestep - 1} and x_t = q_sample(x_0, t)."""
    update_kw = _update_kwargs(parts.config.training)
    apply_fn, schedule, tx = parts.apply_fn, parts.schedule, parts.tx

    def loss_fn(params, x_t, t, y, key):
        logits = apply_fn(params, x_t, t, rng=key, train=True)  # [B, K]
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        return loss, logits

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        k_t, k_noise, k_drop = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
        x0, y = batch["image"], batch["label"]
        t, _ = ts.sample_uniform(k_t, x0.shape[0], max_timestep)
        noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
        x_t = diffusion.q_sample(schedule, x0, t, noise=noise)
        (loss, logits), grads = grad_fn(state.params, x_t, t, y, k_drop)
        state, grad_norm, finite = apply_gradients(state, grads, loss, tx, **update_kw)
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
        return state, _metrics(loss, grad_norm, parts.lr_fn(state.step - 1), finite) | {
            "accuracy": accuracy
        }

    return train_step


def _metrics(loss, grad_norm, lr, finite) -> dict:
    return {"loss": loss, "grad_norm": grad_norm, "lr": lr, "finite": finite}


def donate_by_default(mesh) -> bool:
    """Whether `compile_train_step` donates the state: on GPUs and TPUs, where it halves the
    state's memory, and not on CPUs. There, writing the new state over the old one makes XLA copy
    the old params, EMA and Adam moments first (XLA's temporaries 703 MiB instead of 243 MiB for
    the CIFAR-10 U-Net at batch 8), and the step was 8% slower (experiments/BENCHMARKS.md)."""
    return mesh.devices.flat[0].platform != "cpu"


def compile_train_step(
    train_step: Callable, mesh, state_sharding: Any = None, *, donate: bool | None = None
) -> Callable:
    """jit with the batch split over every mesh axis and, when `donate` (default:
    `donate_by_default(mesh)`), the state donated: the caller must not reuse the state it passed.

    `state_sharding` (a pytree of shardings like the state, e.g. from the abstract state of
    `state.init_state`) defaults to replicated; the metrics come back replicated."""
    rep = parallel.replicated(mesh)
    state_sharding = rep if state_sharding is None else state_sharding
    donate = donate_by_default(mesh) if donate is None else donate
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
        out_shardings=(state_sharding, rep),
        donate_argnums=0 if donate else (),
    )
