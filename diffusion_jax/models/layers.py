"""Building blocks of the DDPM U-Net (Ho et al. 2020), in flax.linen, NHWC.

    from diffusion_jax.models import layers
    temb = layers.get_timestep_embedding(t, 128)                     # [B, 128]
    h = layers.ResnetBlock(out_ch=256, dropout=0.1)(x, temb, train=True)
    h = layers.AttnBlock()(h)
    h = layers.Downsample(with_conv=True)(h)                         # [B, H/2, W/2, C]

Every block takes a compute ``dtype`` (float32 or bfloat16) and keeps its parameters in float32.
GroupNorm always runs in float32: its mean and variance reductions lose too much precision in
bfloat16. Submodule names follow ``diffusion_tf/models/unet.py`` (``norm1``, ``conv1``,
``temb_proj``, ``nin_shortcut``, ``q``/``k``/``v``/``proj_out``, ...) so that a ported checkpoint
maps onto this tree by name.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

GROUPNORM_GROUPS = 32
GROUPNORM_EPSILON = 1e-6
# DDPM's "init_scale=0." is really 1e-10: variance_scaling rejects a zero scale, and a tiny
# non-zero kernel keeps gradients flowing while making the residual branch start as identity.
ZERO_INIT_SCALE = 1e-10


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    """DDPM's kernel initialiser: variance scaling, fan_avg, uniform."""
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def get_timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal embedding of timesteps ``t`` [B] -> [B, dim], float32: frequencies
    ``exp(-log(10000) * i / (half - 1))`` for ``i < half = dim // 2`` (DDPM's spacing, unlike the
    Transformer's ``/ half``); output ``[sin, cos]``, plus a zero column when ``dim`` is odd."""
    if dim < 4:
        raise ValueError(f"Timestep embedding dim must be >= 4 (got {dim}); half - 1 must be > 0.")
    t = jnp.asarray(t, dtype=jnp.float32)
    if t.ndim != 1:
        raise ValueError(f"Timesteps must have shape [B], got {t.shape}.")
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = t[:, None] * freqs[None, :]  # [B, half]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)  # [B, 2 * half]
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def check_encoder_inputs(x: jax.Array, t: jax.Array, ch: int, ch_mult) -> None:
    """The checks every U-Net-shaped network makes: NHWC images whose size survives
    len(ch_mult) - 1 halvings, GroupNorm-divisible widths, and one timestep per image."""
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}.")
    b, height, width, _ = x.shape
    factor = 2 ** (len(ch_mult) - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"Image size {height}x{width} is not divisible by {factor} = 2**(len(ch_mult)-1) "
            f"for ch_mult={tuple(ch_mult)}; resize/crop the images or use fewer levels."
        )
    for mult in (1, *ch_mult):
        if (ch * mult) % GROUPNORM_GROUPS:
            raise ValueError(
                f"Channel count ch*mult = {ch}*{mult} = {ch * mult} is not "
                f"divisible by GroupNorm's {GROUPNORM_GROUPS} groups; choose ch (and "
                f"ch_mult) so every level has a multiple of {GROUPNORM_GROUPS} channels."
            )
    if t.shape != (b,):
        raise ValueError(f"t must have shape [B] = ({b},), got {t.shape}.")


def time_mlp(t: jax.Array, ch: int, dtype: Dtype) -> jax.Array:
    """DDPM's time embedding: sinusoid(t, ch) -> Dense(4ch) -> swish -> Dense(4ch), [B, 4ch].
    Call inside a ``@nn.compact`` method: its layers are the caller's "temb_dense0/1"."""
    temb = get_timestep_embedding(t, ch)  # [B, ch], float32
    temb = nin(temb, 4 * ch, "temb_dense0", dtype)
    return nin(nn.swish(temb), 4 * ch, "temb_dense1", dtype)  # [B, 4ch]


def group_norm(x: jax.Array, name: str) -> jax.Array:
    """32-group GroupNorm computed in float32, cast back to ``x.dtype``. Call inside a
    ``@nn.compact`` method; ``name`` becomes the submodule name."""
    norm = nn.GroupNorm(
        num_groups=GROUPNORM_GROUPS,
        epsilon=GROUPNORM_EPSILON,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        name=name,
    )
    return norm(x.astype(jnp.float32)).astype(x.dtype)


def conv3x3(
    x: jax.Array,
    features: int,
    name: str,
    dtype: Dtype,
    *,
    init_scale: float = 1.0,
    stride: int = 1,
) -> jax.Array:
    """3x3 convolution with TF-style 'SAME' padding (extra pad goes bottom/right)."""
    conv = nn.Conv(
        features,
        kernel_size=(3, 3),
        strides=(stride, stride),
        padding="SAME",
        kernel_init=default_init(init_scale),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )
    return conv(x)


def nin(x: jax.Array, features: int, name: str, dtype: Dtype, *, init_scale: float = 1.0):
    """Network-in-network: a dense layer over the last (channel) axis, i.e. a 1x1 conv."""
    dense = nn.Dense(
        features,
        kernel_init=default_init(init_scale),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )
    return dense(x)


class ResnetBlock(nn.Module):
    """Pre-activation residual block conditioned on the time embedding ``temb`` [B, T]."""

    out_ch: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool = False) -> jax.Array:
        in_ch = x.shape[-1]
        h = nn.swish(group_norm(x, "norm1"))
        h = conv3x3(h, self.out_ch, "conv1", self.dtype)  # [B, H, W, out_ch]
        temb_out = nin(nn.swish(temb), self.out_ch, "temb_proj", self.dtype)  # [B, out_ch]
        h = h + temb_out[:, None, None, :]
        h = nn.swish(group_norm(h, "norm2"))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(h, self.out_ch, "conv2", self.dtype, init_scale=ZERO_INIT_SCALE)
        if in_ch != self.out_ch:
            x = nin(x, self.out_ch, "nin_shortcut", self.dtype)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection. ``implementation`` is
    `jax.nn.dot_product_attention`'s: None lets JAX choose (XLA's attention), "cudnn" asks for
    cuDNN's fused kernel on NVIDIA GPUs, which needs a bfloat16 or float16 ``dtype`` and a head
    (here: channel) dimension of at most 128, or 256 from Hopper on."""

    dtype: Dtype = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        h = group_norm(x, "norm")
        # [B, H*W, 1, C]: one head whose width is the full channel count.
        q, k, v = (nin(h, c, name, self.dtype).reshape(b, height * width, 1, c) for name in "qkv")
        h = jax.nn.dot_product_attention(
            q, k, v, scale=c**-0.5, implementation=self.implementation
        )  # [B, H*W, 1, C]
        h = h.reshape(b, height, width, c)
        h = nin(h, c, "proj_out", self.dtype, init_scale=ZERO_INIT_SCALE)
        return x + h


class Downsample(nn.Module):
    """Halve H and W: stride-2 3x3 conv, or 2x2 average pooling without a conv."""

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.with_conv:
            return conv3x3(x, x.shape[-1], "conv", self.dtype, stride=2)
        return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, optionally followed by a 3x3 conv."""

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [B, 2H, 2W, C]
        if self.with_conv:
            h = conv3x3(h, x.shape[-1], "conv", self.dtype)
        return h


def apply_module(module: nn.Module, params: Any, args: tuple, *, rng, train: bool, call: str):
    """`module.apply({"params": params}, *args, train=train)` with `rng` feeding the 'dropout'
    collection, which training with dropout needs (the error shows the `call` to make)."""
    dropout = float(getattr(module, "dropout", 0.0))
    if train and dropout > 0 and rng is None:
        raise ValueError(f"train=True with dropout={dropout} needs a PRNG key: call {call}.")
    rngs = None if rng is None else {"dropout": rng}
    return module.apply({"params": params}, *args, train=train, rngs=rngs)
