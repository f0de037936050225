"""Drawing training timesteps: uniform, or importance-sampled by the loss's second moment.

    t, weights = timestep_sampling.sample_uniform(key, batch, sched.num_timesteps)
    loss = jnp.mean(terms["loss"] * weights)

    hist = timestep_sampling.init_loss_history(sched.num_timesteps)     # a pytree, keep it in state
    t, weights = timestep_sampling.sample_importance(key, batch, hist)
    hist = timestep_sampling.update_loss_history(hist, t, terms["loss"])

Importance sampling is improved DDPM's (Nichol & Dhariwal 2021, section 3.3) for L_vlb: p_t is
proportional to sqrt(E[L_t^2]) over the last `history` losses seen at each t, mixed with a uniform
share, and uniform until every t has a full history. The history is a plain pytree that
checkpoints with the train state; under data parallelism, update it with every device's losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


def sample_uniform(rng: jax.Array, batch: int, num_timesteps: int):
    """t ~ U{0, ..., T-1} [B] int32, with weights of one [B]."""
    t = jax.random.randint(rng, (batch,), 0, num_timesteps, dtype=jnp.int32)
    return t, jnp.ones((batch,), jnp.float32)


@struct.dataclass
class LossHistory:
    """The last `history` losses seen at each timestep ([T, history]) and how many were seen."""

    losses: jnp.ndarray  # [T, H] float32, oldest first
    counts: jnp.ndarray  # [T] int32, saturating at H
    uniform_prob: float = struct.field(pytree_node=False, default=0.001)


def init_loss_history(
    num_timesteps: int, history: int = 10, uniform_prob: float = 0.001
) -> LossHistory:
    if history < 1 or not 0.0 <= uniform_prob <= 1.0:
        raise ValueError("history must be >= 1 and uniform_prob in [0, 1].")
    return LossHistory(
        losses=jnp.zeros((num_timesteps, history), jnp.float32),
        counts=jnp.zeros((num_timesteps,), jnp.int32),
        uniform_prob=uniform_prob,
    )


def importance_probs(hist: LossHistory) -> jnp.ndarray:
    """p_t [T]: uniform until warm, then (1 - u) sqrt(E[L_t^2]) / Z + u / T."""
    num_timesteps, history = hist.losses.shape
    uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps, jnp.float32)
    rms = jnp.sqrt(jnp.mean(jnp.square(hist.losses), axis=-1))
    total = jnp.sum(rms)
    learned = jnp.where(total > 0, rms / jnp.where(total > 0, total, 1.0), uniform)
    learned = learned * (1.0 - hist.uniform_prob) + hist.uniform_prob / num_timesteps
    warm = jnp.all(hist.counts >= history)
    return jnp.where(warm, learned, uniform)


def sample_importance(rng: jax.Array, batch: int, hist: LossHistory):
    """t ~ p_t [B] int32 and the weights 1 / (T p_t) [B] that keep the loss estimate unbiased."""
    probs = importance_probs(hist)
    num_timesteps = probs.shape[0]
    t = jax.random.choice(rng, num_timesteps, (batch,), p=probs).astype(jnp.int32)
    return t, 1.0 / (num_timesteps * probs[t])


def update_loss_history(hist: LossHistory, t: jnp.ndarray, losses: jnp.ndarray) -> LossHistory:
    """Appends each (t_i, loss_i) in batch order; a full row drops its oldest loss."""
    history = hist.losses.shape[1]

    def push(i, state):
        table, counts = state
        ti, loss = t[i], jax.lax.stop_gradient(losses[i]).astype(jnp.float32)
        row, count = table[ti], counts[ti]
        shifted = jnp.roll(row, -1).at[-1].set(loss)
        row = jnp.where(
            count >= history, shifted, row.at[jnp.minimum(count, history - 1)].set(loss)
        )
        return table.at[ti].set(row), counts.at[ti].set(jnp.minimum(count + 1, history))

    table, counts = jax.lax.fori_loop(0, t.shape[0], push, (hist.losses, hist.counts))
    return hist.replace(losses=table, counts=counts)
