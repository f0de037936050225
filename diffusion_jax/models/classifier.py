"""The noise-aware classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021).

    from diffusion_jax.models.classifier import (
        NoisyClassifier, make_classifier_apply_fn, make_classifier_cond_fn)

    clf = NoisyClassifier(num_classes=10, ch=32, ch_mult=(1, 2), attn_resolutions=(4,))
    params = clf.init(jax.random.key(0), x, t)["params"]
    classifier_apply = make_classifier_apply_fn(clf)
    logits = classifier_apply(params, x_t, t)               # [B, num_classes], float32
    cond_fn = make_classifier_cond_fn(classifier_apply, params, scale=3.0)
    g = cond_fn(x_t, t_model, y)        # scale * grad_x log p(y | x_t, t), [B, H, W, C]
    x0 = samplers.sample_ancestral(apply_fn, model_params, sched, shape, key, y=y,
                                   guidance=Guidance(cond_fn=cond_fn))  # the 3.0 is in cond_fn
    # the samplers pass y to the network too; an unconditional one drops it (generate.generate):
    uncond_fn = lambda p, x, t, y=None, **kw: apply_fn(p, x, t, None, **kw)

The network is the encoder half of the DDPM U-Net (`models/unet.py`), middle block included, then
GroupNorm -> swish -> global average pooling -> Dense(num_classes): the "adaptive" (average-pooling)
head of the paper's classifier; its attention-pooling head is not implemented. Unlike the paper,
the output layer is not zero-initialised, so an untrained classifier already depends on x and t
(convenient for tests; training is not affected in practice). ``t`` is the *original* timestep of
the diffusion the classifier was trained for (a respaced sampler passes
``diffusion.model_timesteps(schedule, t)``, as for the denoiser). Trained on q(x_t | x_0) of one
schedule, the classifier must guide a diffusion of the same beta schedule and number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import (
    AttnBlock,
    Downsample,
    Dtype,
    ResnetBlock,
    apply_module,
    check_encoder_inputs,
    conv3x3,
    group_norm,
    nin,
    time_mlp,
)

ClassifierApplyFn = Callable[..., jax.Array]
CondFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class NoisyClassifier(nn.Module):
    """The U-Net encoder with a pooled linear head: ``(x_t [B, H, W, C], t [B]) -> logits``.
    Attributes mirror `UNet`'s (same submodule names for the shared part); ``dtype`` is the
    compute dtype, parameters stay float32 and the logits are float32."""

    num_classes: int
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    resamp_with_conv: bool = True

    def _check_inputs(self, x: jax.Array, t: jax.Array) -> None:
        if self.num_classes < 2:
            raise ValueError(f"NoisyClassifier needs num_classes >= 2, got {self.num_classes}.")
        check_encoder_inputs(x, t, self.ch, self.ch_mult)

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, *, train: bool = False, return_features: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Logits [B, num_classes]; with ``return_features`` also the pooled features
        [B, ch * ch_mult[-1]] that feed the head (float32), e.g. for FID/KID on small data."""
        t = jnp.asarray(t)
        self._check_inputs(x, t)
        temb = time_mlp(t, self.ch, self.dtype)  # [B, 4ch]

        def res_block(h: jax.Array, ch: int, name: str) -> jax.Array:
            block = ResnetBlock(ch, dropout=self.dropout, dtype=self.dtype, name=name)
            return block(h, temb, train=train)

        h = conv3x3(x.astype(self.dtype), self.ch, "conv_in", self.dtype)  # [B, H, W, ch]
        for i, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = res_block(h, self.ch * mult, f"down_{i}_block_{j}")
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(dtype=self.dtype, name=f"down_{i}_attn_{j}")(h)
            if i != len(self.ch_mult) - 1:
                h = Downsample(self.resamp_with_conv, self.dtype, name=f"down_{i}_downsample")(h)

        h = res_block(h, h.shape[-1], "mid_block_1")
        h = AttnBlock(dtype=self.dtype, name="mid_attn_1")(h)
        h = res_block(h, h.shape[-1], "mid_block_2")  # [B, H / 2^(L-1), W / 2^(L-1), C_mid]

        h = nn.swish(group_norm(h, "norm_out"))
        h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))  # [B, C_mid]: global average pooling
        logits = nin(h, self.num_classes, "dense_out", jnp.float32)  # [B, num_classes], float32
        return (logits, h) if return_features else logits


def make_classifier_apply_fn(module: nn.Module) -> ClassifierApplyFn:
    """Wrap ``module`` as ``classifier_apply(params, x_t, t, *, rng=None, train=False)``; ``rng``
    feeds the 'dropout' collection and is required when ``train=True`` with dropout."""

    def classifier_apply(params, x_t, t, *, rng=None, train=False) -> jax.Array:
        call = "classifier_apply(params, x_t, t, rng=key, train=True)"
        return apply_module(module, params, (x_t, t), rng=rng, train=train, call=call)

    return classifier_apply


def classifier_log_prob(
    classifier_apply: ClassifierApplyFn, params: Any, x_t: jax.Array, t: jax.Array, y: jax.Array
) -> jax.Array:
    """log p(y | x_t, t) = log_softmax(logits)[y], per example: [B] float32."""
    logp = jax.nn.log_softmax(classifier_apply(params, x_t, t).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=-1)[:, 0]


def make_classifier_cond_fn(
    classifier_apply: ClassifierApplyFn, params: Any, scale: float | jax.Array = 1.0
) -> CondFn:
    """``cond_fn(x_t, t_model, y) = scale * grad_{x_t} log p(y | x_t, t_model)``, [B, ...], the
    ``cond_fn`` the samplers accept (``samplers.Guidance(cond_fn=...)``); ``t_model`` is the
    original timestep (``diffusion.model_timesteps``), ``y`` [B] int the target classes.
    As in improved-diffusion, the returned gradient already carries ``scale``; the samplers'
    ``classifier_scale`` multiplies it again (mu' = mu + classifier_scale * Sigma * cond_fn, DDIM:
    eps' = eps - sqrt(1 - alpha_bar) * classifier_scale * cond_fn), so set the guidance scale in
    one place and leave the other at 1. ``cond_fn`` is a static part of ``Guidance``: build it once
    and reuse it, since a new closure means a new compilation (``params`` are compiled in as
    constants). The gradient is taken of the *sum* over the batch of log p(y_i | x_i): each
    example's log-probability depends on its own x_i only (GroupNorm, attention and pooling are per
    example, dropout is off), so row i of that gradient is exactly grad_{x_i} log p(y_i | x_i)."""

    def total_log_prob(x_t: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.sum(classifier_log_prob(classifier_apply, params, x_t, t, y))

    grad_x = jax.grad(total_log_prob)

    def cond_fn(x_t: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array:
        if y is None:
            raise ValueError("Classifier guidance needs target labels y [B]; got y=None.")
        g = grad_x(x_t.astype(jnp.float32), t, y)  # [B, ...]
        return (scale * g).astype(x_t.dtype)

    return cond_fn
