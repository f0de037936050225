"""The training state pytree, its sharded initialisation, and the guarded optimizer/EMA update.

    abstract, init = state.init_state(parts, mesh)   # parts = setup.diffusion_parts(config)
    train_state = init()                             # created where its shardings say
    train_state, grad_norm, finite = state.apply_gradients(train_state, grads, loss, parts.tx,
        ema_decay=0.9999, ema_warmup=False, on_nonfinite="error")

`TrainState` holds arrays only (no apply_fn, no optimizer object), so that it can be jitted,
donated, sharded and checkpointed as it is: step, Flax parameters, their EMA, the Optax optimizer
state, the base PRNG key of the run, and the count of updates skipped for non-finite values.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffusion_jax import parallel
from diffusion_jax.core import timestep_sampling as ts
from diffusion_jax.validation import ON_NONFINITE


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


def new_state(parts: Any, params: Any) -> TrainState:
    """A TrainState at step 0 for `parts` (`setup.Parts`) holding `params` (EMA = params), with a
    fresh optimizer state, the run's base key and, when t is importance-sampled, an empty loss
    history."""
    history = None
    if parts.kind == "diffusion" and parts.config.diffusion.timestep_sampler == "importance":
        history = ts.init_loss_history(parts.config.diffusion.num_timesteps)
    return create_train_state(params, parts.tx, parts.keys()[1], history)


def init_state(parts: Any, mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
    """(abstract_state, init) for `parts` (`setup.Parts`) on `mesh`: shapes first (eval_shape),
    then shardings (replicated, or split over the mesh's 'fsdp' axis: `parallel.state_shardings`),
    then `init()`, a jitted init that creates the state where it lives. The abstract state's
    ShapeDtypeStructs carry the shardings, ready for `Checkpointer.restore`."""
    init_key, _ = parts.keys()

    def init():
        return new_state(parts, parts.init_params(init_key))

    shapes = jax.eval_shape(init)
    shardings = parallel.state_shardings(shapes, mesh)
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return abstract, (lambda: jax.jit(init, out_shardings=shardings)())


def apply_gradients(
    state: TrainState,
    grads: Any,
    loss: jax.Array,
    tx: optax.GradientTransformation,
    *,
    ema_decay: float,
    ema_warmup: bool = False,
    on_nonfinite: str = "error",
    **replace: Any,
) -> tuple[TrainState, jax.Array, jax.Array]:
    """The optimizer update and EMA of every train step, guarded: (state, grad_norm, finite).

    A step whose loss or gradient is not finite leaves params, EMA, optimizer state and the
    `replace`d fields untouched and counts in `state.skipped`; with on_nonfinite == "error" every
    later step is frozen too, until the loop stops the run naming the step."""
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}.")
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite if on_nonfinite == "skip" else finite & (state.skipped == 0)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay, ema_warmup)
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


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The EMA decay at `step`: fixed, or min(decay, (1 + step) / (10 + step)) when warmed up."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema_params: Any, params: Any, decay: jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params (optax.incremental_update)."""
    return optax.incremental_update(params, ema_params, step_size=1.0 - decay)
