"""Score networks for diffusion models.

Usage::

    from diffusion_jax.models import ddpm_unet, make_apply_fn, count_params

    model = ddpm_unet("cifar10", num_classes=10)
    apply_fn = make_apply_fn(model)   # apply_fn(params, x_t, t, y=None, *, rng=None, train=False)
    count_params(model, (32, 32, 3))
"""

from diffusion_jax.models.layers import (
    AttnBlock,
    Downsample,
    ResnetBlock,
    Upsample,
    get_timestep_embedding,
)
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

__all__ = [
    "AttnBlock",
    "Downsample",
    "PRESET_IMAGE_SIZES",
    "ResnetBlock",
    "UNET_PRESETS",
    "UNet",
    "Upsample",
    "count_params",
    "ddpm_unet",
    "ddpm_unet_config",
    "get_timestep_embedding",
    "make_apply_fn",
    "null_label",
    "null_labels",
]
