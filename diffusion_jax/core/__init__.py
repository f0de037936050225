"""The maths of diffusion models as pure functions of arrays and pytrees (jit, vmap and grad
compose with all of them), in the vocabulary of DDPM and improved-diffusion.

    from diffusion_jax.core import diffusion, losses, schedules
    sched = schedules.make_schedule("linear", 1000)            # a frozen pytree of tables
    x_t = diffusion.q_sample(sched, x_0, t, noise=eps)         # q(x_t | x_0)
    terms = losses.training_losses(apply_fn, params, sched, x_0, t, noise=eps)

`schedules` (beta schedules, respacing), `diffusion` (q(x_t|x_0), q(x_{t-1}|x_t,x_0),
p(x_{t-1}|x_t), parameterisations, DDIM steps, guidance arithmetic), `losses` (the variational
bound, L_simple, hybrid, bits/dim), `timestep_sampling` (uniform and importance-sampled t).
This is the lowest layer: it may import nothing else of the package.
"""
