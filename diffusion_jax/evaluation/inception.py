"""The FID Inception-v3 network in Flax (pytorch-fid's `FIDInceptionV3`) and its batched apply.

    module, variables = inception_weights.load_inception()   # after `diffusion-jax fetch-inception`
    fn = inception.make_inception_fn(module, variables)       # split over this process's devices
    pool, logits = fn(images_uint8)                           # [N, 2048] pool, [N, 1008] logits

It is the 2015-12-05 TensorFlow Inception graph of TTUR's FID, the DDPM paper and pytorch-fid:
torchvision's Inception-v3 with FID's pooling quirks and a 1008-way classifier. Images in [0, 255]
of any size are resized to 299x299 as pytorch-fid does (`resize_bilinear`) and scaled to [-1, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffusion_jax import parallel

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps=0.001, running statistics) + ReLU."""

    features: int
    kernel_size: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: tuple[int, int] = (0, 0)  # (rows, columns), symmetric as in torch
    dtype: Any = jnp.float32
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            dtype=self.dtype,
            precision=self.precision,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    # TensorFlow's average pool leaves the padded zeros out of the mean (count_include_pad=False).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
    dtype: Any = jnp.float32
    precision: Any = jax.lax.Precision.HIGHEST

    def conv(self, name, features, kernel_size=(1, 1), strides=1, padding=(0, 0)):
        return BasicConv2d(
            features, kernel_size, strides, padding, self.dtype, self.precision, name=name
        )


class FIDInceptionA(_Block):
    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 64)(x)
        b5 = self.conv("branch5x5_1", 48)(x)
        b5 = self.conv("branch5x5_2", 64, (5, 5), padding=(2, 2))(b5)
        b3 = self.conv("branch3x3dbl_1", 64)(x)
        b3 = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(b3)
        b3 = self.conv("branch3x3dbl_3", 96, (3, 3), padding=(1, 1))(b3)
        bp = self.conv("branch_pool", self.pool_features)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3", 384, (3, 3), strides=2)(x)
        bd = self.conv("branch3x3dbl_1", 64)(x)
        bd = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(bd)
        bd = self.conv("branch3x3dbl_3", 96, (3, 3), strides=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionC(_Block):
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = self.conv("branch1x1", 192)(x)
        b7 = self.conv("branch7x7_1", c7)(x)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = self.conv("branch7x7dbl_1", c7)(x)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = self.conv("branch_pool", 192)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3_1", 192)(x)
        b3 = self.conv("branch3x3_2", 320, (3, 3), strides=2)(b3)
        b7 = self.conv("branch7x7x3_1", 192)(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, (3, 3), strides=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionE(_Block):
    """FIDInceptionE_1 (average pool without padding) or, with max_pool, FIDInceptionE_2: the 2015
    graph's last block pools with a max pool where the paper has an average pool."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 320)(x)
        b3 = self.conv("branch3x3_1", 384)(x)
        b3a = self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3)
        b3b = self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3)
        bd = self.conv("branch3x3dbl_1", 448)(x)
        bd = self.conv("branch3x3dbl_2", 384, (3, 3), padding=(1, 1))(bd)
        bda = self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd)
        bdb = self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = self.conv("branch_pool", 192)(pooled)
        return jnp.concatenate([b1, b3a, b3b, bda, bdb, bp], axis=-1)  # = [b1, b3, bd, bp]


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """[B, H, W, C] float -> [B, size, size, C] as pytorch-fid's F.interpolate(mode="bilinear",
    align_corners=False): half-pixel centres, edge pixels repeated, no antialiasing."""
    b, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    return jax.image.resize(images, (b, size, size, c), method="linear", antialias=False)


class FIDInceptionV3(nn.Module):
    """images [B, H, W, 3] in [0, 255] -> (pool [B, 2048], logits [B, 1008]), both float32, with
    the torch state dict's submodule names (Conv2d_1a_3x3, ...): conversion is a renaming.
    `precision` (convolutions, classifier): the default HIGHEST keeps GPUs from using TF32."""

    dtype: Any = jnp.float32
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, images):
        kw = dict(dtype=self.dtype, precision=self.precision)
        x = jnp.asarray(images, jnp.float32) / 255.0
        x = resize_bilinear(x, INPUT_SIZE)  # pytorch-fid resizes [0, 1] images
        x = (2.0 * x - 1.0).astype(self.dtype)  # [B, 299, 299, 3] in [-1, 1]
        x = BasicConv2d(32, (3, 3), 2, **kw, name="Conv2d_1a_3x3")(x)  # [B, 149, 149, 32]
        x = BasicConv2d(32, (3, 3), **kw, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), **kw, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_stride2(x)  # [B, 73, 73, 64]
        x = BasicConv2d(80, (1, 1), **kw, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), **kw, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride2(x)  # [B, 35, 35, 192]
        x = FIDInceptionA(**kw, pool_features=32, name="Mixed_5b")(x)
        x = FIDInceptionA(**kw, pool_features=64, name="Mixed_5c")(x)
        x = FIDInceptionA(**kw, pool_features=64, name="Mixed_5d")(x)  # [B, 35, 35, 288]
        x = InceptionB(**kw, name="Mixed_6a")(x)  # [B, 17, 17, 768]
        x = FIDInceptionC(**kw, channels_7x7=128, name="Mixed_6b")(x)
        x = FIDInceptionC(**kw, channels_7x7=160, name="Mixed_6c")(x)
        x = FIDInceptionC(**kw, channels_7x7=160, name="Mixed_6d")(x)
        x = FIDInceptionC(**kw, channels_7x7=192, name="Mixed_6e")(x)
        x = InceptionD(**kw, name="Mixed_7a")(x)  # [B, 8, 8, 1280]
        x = FIDInceptionE(**kw, max_pool=False, name="Mixed_7b")(x)
        x = FIDInceptionE(**kw, max_pool=True, name="Mixed_7c")(x)  # [B, 8, 8, 2048]
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, 2048]
        logits = nn.Dense(NUM_LOGITS, precision=self.precision, name="fc")(pool)  # [B, 1008]
        return pool, logits.astype(jnp.float32)


def variable_shapes() -> dict[str, tuple[int, ...]]:
    """{"params/Mixed_5b/branch1x1/conv/kernel": shape, ...} for every Flax leaf."""
    return dict(_variable_shapes())


@functools.cache
def _variable_shapes() -> dict[str, tuple[int, ...]]:
    images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    tree = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), images)  # traced, not run
    flat = traverse_util.flatten_dict(dict(tree), sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


@functools.partial(jax.jit, static_argnums=0)
def _apply(module: FIDInceptionV3, variables, images):
    # One jitted function for all extractors: equal modules share compiled programs.
    return module.apply(variables, images)


def make_inception_fn(
    module: FIDInceptionV3, variables: Mapping, *, devices=None
) -> Callable[[Any], tuple[jax.Array, jax.Array]]:
    """Jitted images [B, H, W, 3] (uint8, or float in [0, 255]) -> float32 (pool [B, 2048], logits
    [B, 1008]), split over `devices` (default: this process's, as each host extracts its own) after
    padding to a multiple of their count; compiles once per (B, H, W, dtype)."""
    devices = jax.local_devices() if devices is None else list(devices)
    mesh = parallel.data_mesh(devices)
    variables = jax.device_put(variables, parallel.replicated(mesh))
    batch_sharding = parallel.batch_sharding(mesh)

    def inception_fn(images):
        images = np.asarray(images)
        if images.ndim == 4 and images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)  # grayscale, as FID tools treat MNIST
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Expected images [B, H, W, 3] (or 1 channel), got {images.shape}.")
        num = images.shape[0]
        pad = -num % len(devices)
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        pool, logits = _apply(module, variables, jax.device_put(images, batch_sharding))
        return (pool[:num], logits[:num]) if pad else (pool, logits)

    return inception_fn
