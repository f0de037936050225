"""DDPM's CelebA-HQ 256x256 (0.5M steps).

The 114M-parameter U-Net, batch 64, lr 2e-5, no dropout (`ddpm256_config`).

diffusion-jax train --config celebahq256 --workdir runs/celebahq256
"""

from diffusion_jax.configs import ddpm256_config


def get_config():
    return ddpm256_config("celeb_a_hq", 500_000)
