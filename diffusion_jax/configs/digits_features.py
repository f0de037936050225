"""The digits feature network: FID/KID/precision/recall for the CPU-scale digits experiments.

    diffusion-jax train-classifier --config digits_features \\
        --workdir runs/digits_features

Inception features of 8x8 digits upscaled to 299x299 say little; the papers' metrics need a
network trained on the data itself (as FID on MNIST commonly uses a LeNet's features). This is
the U-Net encoder of digits_classifier.py trained on clean training digits only
(`classifier.max_timestep = 1`: t = 0, 1% noise), with dropout; its 128-d pooled features serve
`diffusion-jax ref-stats/evaluate --features classifier --feature_workdir runs/digits_features`,
and its logits the Inception-Score analogue and class accuracy of samples.
"""

import ml_collections

from diffusion_jax.configs import base_config


def get_config():
    config = base_config()
    config.data.dataset = "digits"
    config.data.use_labels = True
    config.classifier = ml_collections.ConfigDict(
        dict(
            ch=64,
            ch_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(4,),
            dropout=0.1,
            dtype="float32",
            max_timestep=1,  # train on x_0 only
        )
    )
    config.diffusion.update(beta_schedule="linear", num_timesteps=1000)
    config.optim.update(learning_rate=1e-3, warmup_steps=100, grad_clip=1.0)
    config.training.update(batch_size=64, num_steps=1500, ema_decay=0.999)
    config.training.update(checkpoint_every=500, log_every=50, eval_every=500, sample_every=0)
    return config
