"""The DDPM U-Net (Ho et al. 2020) in flax.linen, with optional class conditioning.

    from diffusion_jax.models import UNet, ddpm_unet, make_apply_fn
    model = ddpm_unet("cifar10")                       # or UNet(ch=64, ch_mult=(1, 2), ...)
    params = model.init(jax.random.key(0), x, t)["params"]
    apply_fn = make_apply_fn(model)
    eps = apply_fn(params, x_t, t)                     # eval: deterministic
    eps = apply_fn(params, x_t, t, rng=key, train=True)  # train: dropout on

``x`` is [B, H, W, C] float, ``t`` [B] int or float timesteps and ``y`` [B] int labels or None.
The output is always float32 [B, H, W, out_channels]; with ``learned_variance=True`` it has 2C
channels, ``out[..., :C]`` the mean prediction and ``out[..., C:]`` the variance values. Class
conditioning (``num_classes=K``) learns K + 1 label embeddings: index K is the "null" label of
classifier-free guidance (``null_label``), which ``y=None`` selects in a conditional model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import (
    ZERO_INIT_SCALE,
    AttnBlock,
    Downsample,
    Dtype,
    ResnetBlock,
    Upsample,
    apply_module,
    check_encoder_inputs,
    conv3x3,
    group_norm,
    time_mlp,
)

ApplyFn = Callable[..., jax.Array]


def null_label(num_classes: int) -> int:
    """Index of the "null" (unconditional) label for a model with ``num_classes`` classes."""
    return num_classes


def null_labels(batch: int, num_classes: int) -> jax.Array:
    """[B] int32 array filled with the null label, for the unconditional half of CFG."""
    return jnp.full((batch,), null_label(num_classes), dtype=jnp.int32)


class UNet(nn.Module):
    """DDPM U-Net. Attributes mirror ``diffusion_tf/models/unet.py``'s options. ``out_channels``
    is the total number of output channels (None: C, or 2C with ``learned_variance``); ``dtype`` is
    the compute dtype; parameters stay float32. Opt-in speed options, none of which changes the
    parameters or the function computed: ``remat`` recomputes each residual and attention block's
    activations in the backward pass instead of keeping them (``"full"``: keep only the block
    inputs; ``"dots"``: also keep the convolution and matmul outputs, recompute norms and
    activations), trading compute for memory on the 256x256 networks; ``attention_impl`` goes to
    `jax.nn.dot_product_attention` (see `AttnBlock`)."""

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    num_classes: int | None = None
    learned_variance: bool = False
    out_channels: int | None = None
    dtype: Dtype = jnp.float32
    resamp_with_conv: bool = True
    remat: str = ""
    attention_impl: str | None = None

    @property
    def null_label(self) -> int:
        if self.num_classes is None:
            raise ValueError("This UNet is unconditional (num_classes=None); it has no null label.")
        return null_label(self.num_classes)

    def _check_inputs(self, x: jax.Array, t: jax.Array, y: jax.Array | None) -> None:
        check_encoder_inputs(x, t, self.ch, self.ch_mult)
        b, c = x.shape[0], x.shape[-1]
        if y is not None:
            if self.num_classes is None:
                raise ValueError(
                    "Labels y were given to an unconditional UNet (num_classes=None); "
                    "pass y=None or build the model with num_classes set."
                )
            if y.shape != (b,):
                raise ValueError(f"y must have shape [B] = ({b},), got {y.shape}.")
        if self.learned_variance and self.out_channels is not None and self.out_channels % 2:
            raise ValueError(
                f"learned_variance needs an even out_channels (mean + variance halves), "
                f"got {self.out_channels}; leave out_channels=None to use 2*C = {2 * c}."
            )

    def _out_channels(self, in_ch: int) -> int:
        if self.out_channels is not None:
            return self.out_channels
        return 2 * in_ch if self.learned_variance else in_ch

    def _time_embedding(self, t: jax.Array, y: jax.Array | None) -> jax.Array:
        temb_ch = 4 * self.ch
        temb = time_mlp(t, self.ch, self.dtype)  # [B, 4ch]
        if self.num_classes is not None:
            if y is None:
                y = null_labels(t.shape[0], self.num_classes)
            label_emb = nn.Embed(
                self.num_classes + 1,
                temb_ch,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name="label_emb",
            )
            temb = temb + label_emb(y)  # [B, 4ch]
        return temb

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        y: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        t = jnp.asarray(t)
        y = None if y is None else jnp.asarray(y)
        self._check_inputs(x, t, y)
        out_ch = self._out_channels(x.shape[-1])
        num_levels = len(self.ch_mult)
        temb = self._time_embedding(t, y)

        resnet_cls, attn_cls = block_classes(self.remat)

        def res_block(h: jax.Array, ch: int, name: str) -> jax.Array:
            block = resnet_cls(ch, dropout=self.dropout, dtype=self.dtype, name=name)
            return block(h, temb, train)

        def attn_block(h: jax.Array, name: str) -> jax.Array:
            return attn_cls(dtype=self.dtype, implementation=self.attention_impl, name=name)(h)

        def maybe_attn(h: jax.Array, name: str) -> jax.Array:
            if h.shape[1] in self.attn_resolutions:
                h = attn_block(h, name)
            return h

        # Encoder: every intermediate is kept for the decoder's skip connections.
        hs = [conv3x3(x.astype(self.dtype), self.ch, "conv_in", self.dtype)]  # [B, H, W, ch]
        for i, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = res_block(hs[-1], self.ch * mult, f"down_{i}_block_{j}")
                hs.append(maybe_attn(h, f"down_{i}_attn_{j}"))
            if i != num_levels - 1:
                down = Downsample(self.resamp_with_conv, self.dtype, name=f"down_{i}_downsample")
                hs.append(down(hs[-1]))

        h = hs[-1]
        h = res_block(h, h.shape[-1], "mid_block_1")
        h = attn_block(h, "mid_attn_1")
        h = res_block(h, h.shape[-1], "mid_block_2")

        # Decoder: one extra block per level consumes the downsample's skip.
        for i in reversed(range(num_levels)):
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)  # [B, h, w, C_h + C_skip]
                h = res_block(h, self.ch * self.ch_mult[i], f"up_{i}_block_{j}")
                h = maybe_attn(h, f"up_{i}_attn_{j}")
            if i != 0:
                h = Upsample(self.resamp_with_conv, self.dtype, name=f"up_{i}_upsample")(h)
        assert not hs, "every encoder activation must be consumed by a skip connection"

        h = nn.swish(group_norm(h, "norm_out"))
        h = conv3x3(h, out_ch, "conv_out", self.dtype, init_scale=ZERO_INIT_SCALE)
        return h.astype(jnp.float32)  # [B, H, W, out_ch]


# What each `UNet.remat` mode saves for the backward pass of a block ("" = no rematerialisation).
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,  # conv and matmul outputs
}


def block_classes(remat: str = "") -> tuple[type[nn.Module], type[nn.Module]]:
    """(ResnetBlock, AttnBlock), wrapped in `nn.remat` with the policy of `remat`; the
    parameter tree is the same either way."""
    if not remat:
        return ResnetBlock, AttnBlock
    if remat not in REMAT_POLICIES:
        raise ValueError(
            f"Unknown UNet remat {remat!r}; choose '' or one of {sorted(REMAT_POLICIES)}."
        )
    policy = REMAT_POLICIES[remat]
    # ResnetBlock(x, temb, train): `train` (argument 3, counting self) selects dropout; static.
    resnet = nn.remat(ResnetBlock, policy=policy, static_argnums=(3,))
    return resnet, nn.remat(AttnBlock, policy=policy)


# Module kwargs of the paper's networks; image sizes live in PRESET_IMAGE_SIZES.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1
    ),
    "lsun256": dict(
        ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0
    ),
}
UNET_PRESETS["celebahq256"] = dict(UNET_PRESETS["lsun256"])
PRESET_IMAGE_SIZES: dict[str, int] = {"cifar10": 32, "lsun256": 256, "celebahq256": 256}


def ddpm_unet_config(name: str) -> dict[str, Any]:
    """A copy of the UNet kwargs for preset ``name`` ("cifar10", "lsun256", "celebahq256")."""
    if name not in UNET_PRESETS:
        raise ValueError(f"Unknown UNet preset {name!r}; choose one of {sorted(UNET_PRESETS)}.")
    return dict(UNET_PRESETS[name])


def ddpm_unet(name: str, **overrides: Any) -> UNet:
    """Build the preset ``name``, with any UNet attribute overridden by keyword."""
    return UNet(**{**ddpm_unet_config(name), **overrides})


def count_params(module: nn.Module, image_shape: Sequence[int]) -> int:
    """Number of parameters of ``module`` for images of shape (H, W, C), without compiling."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    y = None
    if getattr(module, "num_classes", None) is not None:
        y = jax.ShapeDtypeStruct((1,), jnp.int32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x, t, y)
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(variables["params"]))


def make_apply_fn(module: nn.Module) -> ApplyFn:
    """Wrap ``module`` as ``apply_fn(params, x_t, t, y=None, *, rng=None, train=False)``, the
    signature every loss and sampler consumes. ``rng`` feeds the 'dropout' collection (required
    when ``train=True`` and dropout > 0); under ``jax.jit``, ``static_argnames="train"``."""

    def apply_fn(params, x_t, t, y=None, *, rng=None, train=False) -> jax.Array:
        call = "apply_fn(params, x_t, t, y, rng=key, train=True)"
        return apply_module(module, params, (x_t, t, y), rng=rng, train=train, call=call)

    return apply_fn
