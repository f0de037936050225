"""DDPM's LSUN Cat 256x256 (1.8M steps).

The 114M-parameter U-Net, batch 64, lr 2e-5, no dropout (`ddpm256_config`).

diffusion-jax train --config lsun_cat --workdir runs/lsun_cat
"""

from diffusion_jax.configs import ddpm256_config


def get_config():
    return ddpm256_config("lsun/cat", 1_800_000)
