"""A noise-aware classifier for guiding the digits model (diffusion_jax/configs/digits.py).

    diffusion-jax train-classifier --config digits_classifier \\
        --workdir runs/digits_classifier

The encoder half of a small U-Net (ch 32, multipliers 1,2, one block per level, attention at
4x4), trained on x_t of the *same* noise schedule as digits.py (linear, T=1000): a guidance
classifier only fits the schedule it was trained on. Adam at 1e-3, batch 64, no EMA.
"""

import ml_collections

from diffusion_jax.configs import base_config


def get_config():
    config = base_config()
    config.data.dataset = "digits"
    config.data.use_labels = True
    config.classifier = ml_collections.ConfigDict(
        dict(
            ch=32,
            ch_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(4,),
            dropout=0.0,
            dtype="float32",  # compute dtype; parameters stay float32
        )
    )
    # Must equal the guided model's (digits.py) schedule.
    config.diffusion.update(beta_schedule="linear", num_timesteps=1000)
    config.optim.update(learning_rate=1e-3, warmup_steps=100, grad_clip=1.0)
    config.training.update(batch_size=64, num_steps=2000, ema_decay=0.0)
    config.training.update(checkpoint_every=500, log_every=50, eval_every=500, sample_every=0)
    return config
