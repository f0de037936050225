"""DDPM's CIFAR-10 run (Ho et al. 2020, appendix B), exactly.

    diffusion-jax train --config cifar10 --workdir runs/cifar10

T=1000 linear betas, eps prediction with L_simple, the 35.7M-parameter U-Net (ch 128, multipliers
1,2,2,2, two blocks, attention at 16x16, dropout 0.1), batch 128, Adam lr 2e-4 with 5,000 warmup
steps, gradient clipping at 1.0, EMA 0.9999, random horizontal flips, 800k steps.
"""

from diffusion_jax.configs import base_config


def get_config():
    config = base_config()
    config.data.dataset = "cifar10"
    config.data.random_flip = True
    config.model.update(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,))
    config.model.dropout = 0.1
    config.diffusion.update(beta_schedule="linear", num_timesteps=1000, mean_type="eps")
    config.diffusion.update(var_type="fixed_large", loss_type="mse")
    config.optim.update(learning_rate=2e-4, warmup_steps=5000, grad_clip=1.0)
    config.training.update(batch_size=128, num_steps=800_000, ema_decay=0.9999)
    config.training.update(checkpoint_every=10_000, sample_every=10_000, log_every=100)
    return config
