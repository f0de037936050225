"""A 2-D mixture of 8 Gaussians learned by a small MLP: the whole method in seconds.

diffusion-jax train --config toy2d --workdir runs/toy2d
"""

from diffusion_jax.configs import base_config


def get_config():
    config = base_config()
    config.data.dataset = "toy2d"
    config.model.update(name="mlp", mlp_hidden=128, mlp_layers=3, dropout=0.0)
    config.diffusion.update(beta_schedule="cosine", num_timesteps=100)
    config.optim.update(learning_rate=2e-3, warmup_steps=100, grad_clip=1.0)
    config.training.update(batch_size=256, num_steps=2000, ema_decay=0.99)
    config.training.update(checkpoint_every=1000, log_every=100, sample_every=0)
    config.training.num_samples = 2000
    return config
