"""diffusion_jax: denoising diffusion probabilistic models as pure JAX functions and Flax modules.

    from diffusion_jax.core import schedules, diffusion, losses
    from diffusion_jax.sampling import samplers as sampling
    from diffusion_jax.models import ddpm_unet, make_apply_fn

The maths: `schedules` (the noise schedule pytree, respacing), `diffusion` (q(x_t|x_0),
q(x_{t-1}|x_t,x_0), p(x_{t-1}|x_t), DDIM steps, guidance arithmetic), `losses` (the variational
bound, L_simple, bits/dim), `timestep_sampling`. The networks: `models` (the DDPM U-Net, a toy
MLP, the noise-aware classifier). Training: `data`, `train_state`, `train`, `loop`, `checkpoint`,
`parallel`, `classifier_train`. Sampling: `sampling` (compiled chains), `generate` (runs on disk
to .npz). The command line: `cli` (`diffusion-jax`).
"""

__version__ = "0.1.0"
