"""diffusion_jax: denoising diffusion probabilistic models as pure JAX functions and Flax modules.

    from diffusion_jax import schedules, diffusion, losses
    from diffusion_jax.models import unet

`schedules` builds the noise schedule pytree, `diffusion` holds q(x_t|x_0), q(x_{t-1}|x_t,x_0) and
p(x_{t-1}|x_t), `losses` the variational bound, L_simple and bits/dim, `timestep_sampling` the
uniform and importance-sampled timesteps, and `models` the DDPM U-Net.
"""

__version__ = "0.1.0"
