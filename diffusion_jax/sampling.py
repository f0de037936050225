"""Compiled samplers: the ancestral sampler of DDPM as one `lax.fori_loop` over pure reverse steps.

    sched = schedules.make_schedule("linear", 1000, respacing="250")   # or the full schedule
    x0 = sampling.sample_ancestral(apply_fn, params, sched, (16, 32, 32, 3), key,
                                   mean_type="eps", var_type="fixed_large")

The network is given `Schedule.timestep_map[t]`, so a respaced schedule samples a network trained
on the full process with fewer steps. Samples are in [-1, 1] when `clip_denoised` (images).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffusion_jax import diffusion
from diffusion_jax.schedules import Schedule


@functools.partial(
    jax.jit, static_argnames=("apply_fn", "shape", "mean_type", "var_type", "clip_denoised")
)
def sample_ancestral(
    apply_fn,
    params,
    schedule: Schedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    *,
    y: jax.Array | None = None,
    mean_type: str = "eps",
    var_type: str = "fixed_large",
    clip_denoised: bool = True,
) -> jax.Array:
    """x_T ~ N(0, I), then x_{t-1} ~ p(x_{t-1} | x_t) for t = T-1, ..., 0; returns x_0 [shape].

    Step t draws its noise from fold_in(rng, t), so a sample does not depend on the batch it
    shares a call with only through its own key split."""
    num_timesteps = schedule.num_timesteps
    x_init = jax.random.normal(jax.random.fold_in(rng, num_timesteps), shape, jnp.float32)

    def step(i, x_t):
        t = num_timesteps - 1 - i
        t_b = jnp.full((shape[0],), t, jnp.int32)
        out = diffusion.p_mean_variance(
            schedule,
            apply_fn(params, x_t, diffusion.model_timesteps(schedule, t_b), y),
            x_t,
            t_b,
            mean_type=mean_type,
            var_type=var_type,
            clip_denoised=clip_denoised,
        )
        noise = jax.random.normal(jax.random.fold_in(rng, t), shape, jnp.float32)
        return diffusion.p_sample(schedule, out, t_b, noise)

    return jax.lax.fori_loop(0, num_timesteps, step, x_init)
