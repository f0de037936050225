"""DDPM Table 2 ablation (Ho et al. 2020, sec. 4.2): epsilon prediction trained on the true
variational bound L with a learned diagonal Sigma, otherwise DDPM's CIFAR-10 run (cifar10).

    diffusion-jax train --config cifar10_vlb_learned \\
        --workdir runs/cifar10_vlb_learned

Differs from cifar10.py in two fields: diffusion.loss_type = "kl" (the bound, as in
cifar10_vlb_fixed.py) and diffusion.var_type = "learned" (the network also outputs log Sigma, a
second set of C channels; DDPM's model_var_type 'learned'), so the bound trains mean and variance.
The paper's row (Table 2): "-" -- unstable to train, poor samples with out-of-range scores.
"""

from diffusion_jax.configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.diffusion.loss_type = "kl"
    config.diffusion.var_type = "learned"
    return config
