"""The offline default: scikit-learn's bundled 8x8 handwritten digits (1,617 training images).

    diffusion-jax train --config digits --workdir runs/digits

A small U-Net (ch 64, multipliers 1,2, one block per level, attention at 4x4) with DDPM's
recipe otherwise (T=1000 linear, eps, L_simple), 2,500 steps of batch 64: about 8.5 minutes on
two CPU cores, with sample grids (EMA parameters, 250 respaced steps) in runs/digits/samples.
"""

from diffusion_jax.configs import base_config


def get_config():
    config = base_config()
    config.data.dataset = "digits"
    config.model.update(ch=64, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    config.model.dropout = 0.1
    config.diffusion.update(beta_schedule="linear", num_timesteps=1000)
    config.optim.update(learning_rate=1e-3, warmup_steps=200, grad_clip=1.0)
    config.training.update(batch_size=64, num_steps=2500, ema_decay=0.999)
    config.training.update(checkpoint_every=500, log_every=50, sample_every=500)
    config.training.update(num_samples=64, sample_respacing="250")
    return config
