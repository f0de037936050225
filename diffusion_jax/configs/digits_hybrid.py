"""The digits main job (digits.py) with improved DDPM's hybrid objective: a learned variance
(learned_range interpolation) trained by L_simple + 0.001 L_vlb; everything else is digits.py's.

    diffusion-jax train --config digits_hybrid --workdir runs/digits_hybrid
"""

from diffusion_jax.configs import base_config


def get_config():
    config = base_config()
    config.data.dataset = "digits"
    config.model.update(ch=64, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    config.model.dropout = 0.1
    config.diffusion.update(beta_schedule="linear", num_timesteps=1000)
    config.diffusion.update(var_type="learned_range", loss_type="hybrid")
    config.optim.update(learning_rate=1e-3, warmup_steps=200, grad_clip=1.0)
    config.training.update(batch_size=64, num_steps=2500, ema_decay=0.999)
    config.training.update(checkpoint_every=500, log_every=50, sample_every=500)
    config.training.update(num_samples=64, sample_respacing="250")
    return config
