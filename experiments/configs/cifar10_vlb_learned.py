"""DDPM Table 2 ablation (Ho et al. 2020, sec. 4.2): epsilon prediction trained on the true
variational bound L with a learned diagonal Sigma, otherwise DDPM's CIFAR-10 run (cifar10.py).

    diffusion-jax train --config experiments/configs/cifar10_vlb_learned.py \\
        --workdir runs/cifar10_vlb_learned

Differs from cifar10.py in two fields: diffusion.loss_type = "kl" (the bound, as in
cifar10_vlb_fixed.py) and diffusion.var_type = "learned" (the network also outputs log Sigma, a
second set of C channels; DDPM's model_var_type 'learned'), so the bound trains mean and variance.
The paper's row (Table 2): "-" -- unstable to train, poor samples with out-of-range scores.
"""

import importlib.util
from pathlib import Path


def _cifar10_config():
    path = Path(__file__).with_name("cifar10.py")
    spec = importlib.util.spec_from_file_location("_cifar10_base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = _cifar10_config()
    config.diffusion.loss_type = "kl"
    config.diffusion.var_type = "learned"
    return config
