"""Class-conditional digits: the digits recipe with labels, dropped to the null label 10% of the
time so that one network gives both eps(x, y) and eps(x, null) for classifier-free guidance.

    diffusion-jax train --config digits_cond --workdir runs/digits_cond
"""

from diffusion_jax.configs import base_config


def get_config():
    config = base_config()
    config.data.dataset = "digits"
    config.data.use_labels = True
    config.model.update(ch=64, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    config.model.update(dropout=0.1, num_classes=10)
    config.diffusion.update(beta_schedule="linear", num_timesteps=1000, class_drop_prob=0.1)
    config.optim.update(learning_rate=1e-3, warmup_steps=200, grad_clip=1.0)
    config.training.update(batch_size=64, num_steps=2500, ema_decay=0.999)
    config.training.update(checkpoint_every=500, log_every=50, sample_every=500)
    config.training.update(num_samples=64, sample_respacing="250")
    return config
