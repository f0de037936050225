"""A small time-conditioned MLP for low-dimensional data (the 2-D toy problem); the timestep enters
through DDPM's sinusoidal embedding, added after each hidden layer.

    model = MLPDenoiser(hidden=256, num_layers=3)
    params = model.init(key, x, t)["params"]          # x [B, D], t [B]
    apply_fn = make_apply_fn(model)                    # the same contract as the U-Net
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import get_timestep_embedding


class MLPDenoiser(nn.Module):
    hidden: int = 256
    num_layers: int = 3
    num_classes: int | None = None
    out_dim: int | None = None  # default: the input dimension
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y=None, *, train: bool = False) -> jax.Array:
        if y is not None and self.num_classes is None:
            raise ValueError("Labels y were given to an unconditional MLPDenoiser.")
        temb = get_timestep_embedding(jnp.asarray(t), self.hidden)
        temb = nn.Dense(self.hidden)(nn.swish(nn.Dense(self.hidden)(temb)))  # [B, hidden]
        if self.num_classes is not None:
            labels = jnp.full(x.shape[:1], self.num_classes, jnp.int32) if y is None else y
            temb = temb + nn.Embed(self.num_classes + 1, self.hidden)(labels)
        h = nn.Dense(self.hidden)(x)
        for _ in range(self.num_layers):
            h = nn.swish(h + nn.Dense(self.hidden)(temb))
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
            h = nn.Dense(self.hidden)(h)
        return nn.Dense(self.out_dim or x.shape[-1])(nn.swish(h))
