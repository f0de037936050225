"""DDPM's LSUN Church 256x256 (1.2M steps).

The 114M-parameter U-Net, batch 64, lr 2e-5, no dropout (`ddpm256_config`).

diffusion-jax train --config lsun_church --workdir runs/lsun_church
"""

from diffusion_jax.configs import ddpm256_config


def get_config():
    return ddpm256_config("lsun/church_outdoor", 1_200_000)
