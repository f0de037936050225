"""Builds the networks a config names.

model = create_model(config, (32, 32, 3))     # the DDPM U-Net of config.model
model = create_model(config, (2,))            # config.model.name == "mlp": the toy MLP
clf = create_classifier(config.classifier, num_classes=10)   # the noise-aware classifier
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.core.diffusion import learns_variance
from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.models.mlp import MLPDenoiser
from diffusion_jax.models.unet import UNet

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(config, example_shape: Sequence[int]) -> nn.Module:
    """The Flax module of `config.model`, with the output width `config.diffusion` needs."""
    m = config.model
    num_classes = int(m.num_classes) or None
    learned = learns_variance(config.diffusion.var_type)
    dtype = _dtype(m.dtype, "model.dtype")
    if m.name == "unet":
        if len(example_shape) != 3:
            raise ValueError(
                f"model.name='unet' needs images [H, W, C], but the data are "
                f"{tuple(example_shape)}: use model.name='mlp' for vector data."
            )
        return UNet(**_levels(m.to_dict()), num_classes=num_classes, learned_variance=learned,
                    dtype=dtype, resamp_with_conv=m.resamp_with_conv)  # fmt: skip
    if m.name == "mlp":
        dim = int(example_shape[-1])
        return MLPDenoiser(
            hidden=m.mlp_hidden,
            num_layers=m.mlp_layers,
            num_classes=num_classes,
            out_dim=2 * dim if learned else dim,
            dropout=m.dropout,
        )
    raise ValueError(f"Unknown model.name {m.name!r}; choose 'unet' or 'mlp'.")


def create_classifier(classifier_config: Any, num_classes: int) -> NoisyClassifier:
    """The `NoisyClassifier` of a `config.classifier` section (a ConfigDict or a dict)."""
    c = classifier_config if isinstance(classifier_config, dict) else classifier_config.to_dict()
    dtype = _dtype(c.get("dtype", "float32"), "classifier.dtype")
    return NoisyClassifier(num_classes=int(num_classes), **_levels(c), dtype=dtype)


def _levels(section: dict) -> dict[str, Any]:
    """The U-Net encoder's widths, depths, attention and dropout of a model/classifier section."""
    return dict(
        ch=int(section["ch"]),
        ch_mult=tuple(section["ch_mult"]),
        num_res_blocks=int(section["num_res_blocks"]),
        attn_resolutions=tuple(section["attn_resolutions"]),
        dropout=float(section["dropout"]),
    )


def _dtype(name: str, key: str):
    if name not in _DTYPES:
        raise ValueError(f"{key} must be one of {sorted(_DTYPES)}, got {name!r}.")
    return _DTYPES[name]
