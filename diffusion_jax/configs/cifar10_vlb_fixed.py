"""DDPM Table 2 ablation (Ho et al. 2020, sec. 4.2): epsilon prediction trained on the true
variational bound L with a fixed isotropic Sigma, otherwise DDPM's CIFAR-10 run (cifar10).

    diffusion-jax train --config cifar10_vlb_fixed \\
        --workdir runs/cifar10_vlb_fixed

Differs from cifar10.py in one field: diffusion.loss_type = "kl" (the bound's term L_{t-1} at a
uniform t, the decoder NLL L_0 at t = 0, in bits/dim; DDPM's loss_type 'kl'). The variance stays
fixed_large (sigma_t^2 = beta_t, as cifar10.py); the paper reports that beta_t and beta~_t gave
similar results and does not say which its ablation row used.
The paper's row (Tables 1 and 2): IS 7.67 +- 0.13, FID 13.51, NLL <= 3.70 (train 3.69) bits/dim.
"""

from diffusion_jax.configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.diffusion.loss_type = "kl"
    return config
