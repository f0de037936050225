"""DDPM's LSUN Bedroom 256x256 (2.4M steps).

The 114M-parameter U-Net, batch 64, lr 2e-5, no dropout (`ddpm256_config`), and no random
flips: the paper's appendix names LSUN Bedroom as the one dataset trained without them.

diffusion-jax train --config lsun_bedroom --workdir runs/lsun_bedroom
"""

from diffusion_jax.configs import ddpm256_config


def get_config():
    config = ddpm256_config("lsun/bedroom", 2_400_000)
    config.data.random_flip = False
    return config
