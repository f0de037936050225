"""The networks: Flax modules and the `apply_fn` contract the maths and samplers take.

    from diffusion_jax.models import ddpm_unet, make_apply_fn, count_params
    model = ddpm_unet("cifar10", num_classes=10)
    apply_fn = make_apply_fn(model)   # apply_fn(params, x_t, t, y=None, *, rng=None, train=False)
    count_params(model, (32, 32, 3))  # jax.eval_shape: no compute

`layers` (DDPM's blocks), `unet` (the DDPM U-Net and its presets), `mlp` (2-D toy data),
`classifier` (the noise-aware classifier and its guidance gradient), `factory` (the networks a
config names). Models may import only the core layer.
"""

from diffusion_jax.models.layers import get_timestep_embedding
from diffusion_jax.models.unet import (
    PRESET_IMAGE_SIZES,
    UNET_PRESETS,
    UNet,
    count_params,
    ddpm_unet,
    ddpm_unet_config,
    make_apply_fn,
    null_label,
    null_labels,
)

__all__ = ["PRESET_IMAGE_SIZES", "UNET_PRESETS", "UNet", "count_params", "ddpm_unet"]
__all__ += ["ddpm_unet_config", "get_timestep_embedding", "make_apply_fn", "null_label"]
__all__ += ["null_labels"]
