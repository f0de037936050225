"""A tiny run for tests: the bundled digits, a two-level U-Net of width 32, a few steps.

diffusion-jax train --config tiny --workdir /tmp/tiny
"""

from diffusion_jax.configs import base_config


def get_config():
    config = base_config()
    config.data.dataset = "digits"
    config.model.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    config.model.dropout = 0.1
    config.diffusion.update(beta_schedule="cosine", num_timesteps=50)
    config.optim.update(learning_rate=1e-3, warmup_steps=2)
    config.training.update(batch_size=16, num_steps=6, checkpoint_every=2, log_every=2)
    config.training.update(sample_every=0, num_samples=8, ema_decay=0.9, async_checkpoints=False)
    return config
