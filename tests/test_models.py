"""Tests for diffusion_jax.models: timestep embedding, DDPM U-Net and its apply_fn.

Run with ``pytest tests/test_models.py``. Networks are tiny (ch=32, two levels, 16x16)
because JAX compiles slowly on CPU; big-model sizes come from eval_shape only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import (
    UNet,
    count_params,
    ddpm_unet,
    get_timestep_embedding,
    make_apply_fn,
    null_label,
    null_labels,
)

B, H, C = 2, 16, 3
TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1)


def _inputs(seed: int = 0, batch: int = B, size: int = H):
    kx, kt = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (batch, size, size, C))  # [B, H, W, C]
    t = jax.random.randint(kt, (batch,), 0, 1000)  # [B]
    return x, t


def _init(model: UNet, y=None, size: int = H):
    x, t = _inputs(size=size)
    return model.init(jax.random.key(1), x, t, y)["params"]


def _wake(params, seed: int = 7):
    """Replace the ~1e-10 'zero-init' kernels with O(1/sqrt(fan_in)) ones.

    At DDPM's init every residual branch and the output are ~0, so t, y and dropout
    cannot be seen in the output until these kernels are perturbed.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = []
    for leaf, k in zip(leaves, keys, strict=True):
        # Scale-1 kernels have max |w| ~ sqrt(3 / fan_avg) > 1e-2; scale-1e-10 ones < 1e-5.
        if leaf.ndim >= 2 and float(jnp.max(jnp.abs(leaf))) < 1e-4:
            fan_in = math.prod(leaf.shape[:-1])
            leaf = jax.random.normal(k, leaf.shape) / math.sqrt(fan_in)
        new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new)


@pytest.fixture(scope="module")
def tiny():
    model = UNet(**TINY)
    params = _init(model)
    return model, params, _wake(params)


@pytest.fixture(scope="module")
def tiny_cond():
    model = UNet(**TINY, num_classes=10)
    params = _init(model, y=jnp.zeros((B,), jnp.int32))
    return model, _wake(params)


# --- timestep embedding ----------------------------------------------------------------


def test_timestep_embedding_closed_form():
    dim, half = 16, 8
    t = jnp.array([0.0, 1.0, 37.0])
    emb = np.asarray(get_timestep_embedding(t, dim))
    assert emb.shape == (3, dim) and emb.dtype == np.float32
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
    for row, tv in zip(emb, [0.0, 1.0, 37.0], strict=True):
        np.testing.assert_allclose(row[:half], np.sin(tv * freqs), atol=1e-5)
        np.testing.assert_allclose(row[half:], np.cos(tv * freqs), atol=1e-5)
    # DDPM spacing: the last frequency is exactly 1/10000 (not 10000**(-(half-1)/half)).
    np.testing.assert_allclose(emb[1, half - 1], np.sin(1e-4), rtol=1e-4)
    np.testing.assert_allclose(emb[0], np.r_[np.zeros(half), np.ones(half)])


def test_timestep_embedding_odd_dim_pads_zero_column():
    t = jnp.array([3, 500])  # int timesteps are accepted
    odd, even = get_timestep_embedding(t, 9), get_timestep_embedding(t, 8)
    assert odd.shape == (2, 9)
    np.testing.assert_array_equal(odd[:, -1], 0.0)
    np.testing.assert_allclose(odd[:, :8], even)


# --- parameter counts (eval_shape, no compilation) -------------------------------------


def test_param_counts_match_ddpm_reference():
    cifar = count_params(ddpm_unet("cifar10"), (32, 32, 3))
    assert cifar == 35_746_307
    assert count_params(ddpm_unet("lsun256"), (256, 256, 3)) == 113_673_219
    assert count_params(ddpm_unet("celebahq256"), (256, 256, 3)) == 113_673_219
    # Learned variance only widens conv_out from 3 to 6 channels: 3x3x128x3 kernel + 3 bias.
    lv = count_params(ddpm_unet("cifar10", learned_variance=True), (32, 32, 3))
    assert lv - cifar == 3 * 3 * 128 * 3 + 3
    cond = count_params(ddpm_unet("cifar10", num_classes=10), (32, 32, 3))
    assert cond - cifar == (10 + 1) * 4 * 128


# --- forward pass ----------------------------------------------------------------------


def test_output_is_zero_at_init_and_has_input_shape(tiny):
    model, params, woke = tiny
    x, t = _inputs()
    apply_fn = make_apply_fn(model)
    out = apply_fn(params, x, t)
    assert out.shape == (B, H, H, C) and out.dtype == jnp.float32
    # variance_scaling(1e-10, fan_avg, uniform) bounds |w| by sqrt(3e-10 / fan_avg).
    kernel = params["conv_out"]["kernel"]  # [3, 3, 32, C]
    fan_avg = 9 * (32 + C) / 2
    assert float(jnp.max(jnp.abs(kernel))) <= math.sqrt(3e-10 / fan_avg)
    np.testing.assert_array_equal(params["conv_out"]["bias"], 0.0)
    # std(w) ~ 1e-5 / sqrt(fan) times O(1) activations: ~1e-5, versus O(1) once woken up.
    assert float(jnp.max(jnp.abs(out))) < 1e-4
    assert float(jnp.max(jnp.abs(apply_fn(woke, x, t)))) > 1e-2


def test_learned_variance_doubles_channels():
    model = UNet(**TINY, learned_variance=True)
    x, t = _inputs()
    params = _init(model)
    assert params["conv_out"]["kernel"].shape == (3, 3, 32, 2 * C)
    assert model.apply({"params": params}, x, t).shape == (B, H, H, 2 * C)


@pytest.mark.parametrize(
    "overrides, has_attn, has_resamp_conv",
    [
        (dict(attn_resolutions=()), False, True),
        (dict(resamp_with_conv=False), True, False),
    ],
)
def test_architecture_options(overrides, has_attn, has_resamp_conv):
    model = UNet(**{**TINY, **overrides})
    params = _init(model)
    assert ("down_1_attn_0" in params) == has_attn
    # attention follows every block at the 8x8 level, decoder included, and none at 16x16
    attn = sorted(name for name in params if "_attn_" in name and not name.startswith("mid"))
    assert attn == (["down_1_attn_0", "up_1_attn_0", "up_1_attn_1"] if has_attn else [])
    assert "mid_attn_1" in params  # the middle always attends
    assert ("down_0_downsample" in params) == has_resamp_conv
    assert ("up_1_upsample" in params) == has_resamp_conv
    x, t = _inputs()
    assert model.apply({"params": params}, x, t).shape == (B, H, H, C)


def test_output_depends_on_t(tiny):
    model, _, woke = tiny
    x, t = _inputs()
    apply_fn = make_apply_fn(model)
    a, b = apply_fn(woke, x, t), apply_fn(woke, x, t + 100)
    assert bool(jnp.all(jnp.isfinite(a)))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3


def test_class_conditioning(tiny_cond):
    model, woke = tiny_cond
    x, t = _inputs()
    apply_fn = make_apply_fn(model)
    assert model.null_label == null_label(10) == 10
    assert woke["label_emb"]["embedding"].shape == (11, 4 * 32)
    out0 = apply_fn(woke, x, t, jnp.array([0, 0]))
    out3 = apply_fn(woke, x, t, jnp.array([3, 3]))
    assert out0.shape == (B, H, H, C)
    assert float(jnp.max(jnp.abs(out0 - out3))) > 1e-3
    np.testing.assert_allclose(apply_fn(woke, x, t), apply_fn(woke, x, t, null_labels(B, 10)))


def test_dropout_train_vs_eval(tiny):
    model, _, woke = tiny
    x, t = _inputs()
    apply_fn = make_apply_fn(model)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    eval_a, eval_b = apply_fn(woke, x, t), apply_fn(woke, x, t, rng=k1)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_1 = apply_fn(woke, x, t, rng=k1, train=True)
    train_2 = apply_fn(woke, x, t, rng=k2, train=True)
    assert float(jnp.max(jnp.abs(train_1 - train_2))) > 1e-4
    assert float(jnp.max(jnp.abs(train_1 - eval_a))) > 1e-4
    np.testing.assert_array_equal(train_1, apply_fn(woke, x, t, rng=k1, train=True))


def test_bfloat16_compute_keeps_float32_params(tiny):
    _, _, woke = tiny
    model16 = UNet(**TINY, dtype=jnp.bfloat16)
    x, t = _inputs()
    params16 = _init(model16)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params16))
    out32 = make_apply_fn(UNet(**TINY))(woke, x, t)
    out16 = make_apply_fn(model16)(woke, x, t)
    assert out16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out16)))
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert rel < 0.1, rel


def test_jit_apply_fn(tiny):
    model, _, woke = tiny
    x, t = _inputs()
    apply_fn = make_apply_fn(model)
    jitted = jax.jit(apply_fn, static_argnames="train")
    np.testing.assert_allclose(jitted(woke, x, t), apply_fn(woke, x, t), atol=1e-4, rtol=1e-4)


# --- errors ----------------------------------------------------------------------------


def test_error_bad_resolution(tiny):
    model, params, _ = tiny
    x, t = _inputs(size=9)
    with pytest.raises(ValueError, match="not divisible by 2"):
        model.apply({"params": params}, x, t)


def test_error_groups():
    x, t = _inputs()
    with pytest.raises(ValueError, match="32 groups"):
        UNet(**{**TINY, "ch": 48}).init(jax.random.key(0), x, t)


def test_error_labels_to_unconditional_model(tiny):
    model, params, _ = tiny
    x, t = _inputs()
    with pytest.raises(ValueError, match="unconditional"):
        model.apply({"params": params}, x, t, jnp.array([1, 2]))


def test_error_train_without_rng(tiny):
    model, params, _ = tiny
    x, t = _inputs()
    with pytest.raises(ValueError, match="PRNG key"):
        make_apply_fn(model)(params, x, t, train=True)
