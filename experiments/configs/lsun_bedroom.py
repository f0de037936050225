"""DDPM's LSUN Bedroom 256x256 (2.4M steps).

The 114M-parameter U-Net, batch 64, lr 2e-5, no dropout (`ddpm256_config`).

diffusion-jax train --config experiments/configs/lsun_bedroom.py --workdir runs/lsun_bedroom
"""

from diffusion_jax.config import ddpm256_config


def get_config():
    return ddpm256_config("lsun/bedroom", 2_400_000)
