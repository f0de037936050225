"""The training state pytree and the optimizer factory.

    tx, lr_fn = train_state.make_optimizer(config.optim)
    state = train_state.create_train_state(params, tx, rng)   # train.py shards and jits this
    state = state.replace(params=..., opt_state=...)          # replaced, never mutated

`TrainState` holds arrays only (no apply_fn, no optimizer object), so that it can be jitted,
donated, sharded and checkpointed as it is: step, Flax parameters, their EMA, the Optax optimizer
state, the base PRNG key of the run, and the count of updates skipped for non-finite values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 []: steps taken (batches consumed), skipped updates included
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2]: the run's base key; a step's keys are fold_in(rng, step)
    skipped: jax.Array  # int32 []: updates skipped because the loss or gradient was not finite
    # timestep_sampling.LossHistory when t is importance-sampled, else None
    loss_history: Any = None


def create_train_state(
    params: Any, tx: optax.GradientTransformation, rng: jax.Array, loss_history: Any = None
) -> TrainState:
    """A fresh state at step 0 with EMA = params. `rng` is a raw uint32 [2] key."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree_util.tree_map(jnp.copy, params),
        opt_state=tx.init(params),
        rng=rng,
        skipped=jnp.zeros((), jnp.int32),
        loss_history=loss_history,
    )


def learning_rate_schedule(optim) -> Callable[[jax.Array], jax.Array]:
    """Linear warmup from 0 over `warmup_steps`, then constant / cosine / linear decay to
    `lr * final_lr_fraction` at `decay_steps` (DDPM: warmup 5,000 steps, then constant)."""
    lr, warmup = float(optim.learning_rate), int(optim.warmup_steps)
    kind = optim.schedule
    if kind == "constant":
        after = optax.constant_schedule(lr)
    elif kind in ("cosine", "linear"):
        decay = max(int(optim.decay_steps) - warmup, 1)
        end = lr * float(optim.final_lr_fraction)
        after = (
            optax.cosine_decay_schedule(lr, decay, alpha=float(optim.final_lr_fraction))
            if kind == "cosine"
            else optax.linear_schedule(lr, end, decay)
        )
    else:
        raise ValueError(
            f"Unknown optim.schedule {kind!r}; choose 'constant', 'cosine' or 'linear'."
        )
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(optim) -> tuple[optax.GradientTransformation, Callable]:
    """Global-norm clipping, then Adam or AdamW with the schedule above. Returns (tx, lr_fn)."""
    lr_fn = learning_rate_schedule(optim)
    if optim.optimizer == "adam":
        opt = optax.adam(lr_fn, b1=optim.beta1, b2=optim.beta2, eps=optim.eps)
    elif optim.optimizer == "adamw":
        opt = optax.adamw(
            lr_fn, b1=optim.beta1, b2=optim.beta2, eps=optim.eps, weight_decay=optim.weight_decay
        )
    else:
        raise ValueError(f"Unknown optim.optimizer {optim.optimizer!r}; choose 'adam' or 'adamw'.")
    parts = []
    if optim.grad_clip and optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    parts.append(opt)
    return optax.chain(*parts), lr_fn


def check_on_nonfinite(training) -> None:
    if training.on_nonfinite not in ("error", "skip"):
        raise ValueError(
            f"training.on_nonfinite must be 'error' or 'skip', got {training.on_nonfinite!r}."
        )


def apply_gradients(
    state: TrainState,
    grads: Any,
    loss: jax.Array,
    tx: optax.GradientTransformation,
    training,
    **replace: Any,
) -> tuple[TrainState, jax.Array, jax.Array]:
    """The optimizer update and EMA of every train step, guarded: (state, grad_norm, finite).

    A step whose loss or gradient is not finite leaves params, EMA, optimizer state and the
    `replace`d fields untouched and counts in `state.skipped`; with training.on_nonfinite ==
    "error" every later step is frozen too, until the loop stops the run naming the step."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite if training.on_nonfinite == "skip" else finite & (state.skipped == 0)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(state.step, training.ema_decay, training.ema_warmup)
    new = state.replace(
        params=params,
        ema_params=update_ema(state.ema_params, params, decay),
        opt_state=opt_state,
        **replace,
    )
    state = jax.tree_util.tree_map(lambda n, o: jnp.where(apply, n, o), new, state).replace(
        step=state.step + 1, skipped=state.skipped + (~finite).astype(jnp.int32)
    )
    return state, grad_norm, finite


def ema_decay(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The EMA decay at `step`: fixed, or min(decay, (1 + step) / (10 + step)) when warmed up."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema_params: Any, params: Any, decay: jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params (optax.incremental_update)."""
    return optax.incremental_update(params, ema_params, step_size=1.0 - decay)
