import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import schedules


def test_linear_is_ddpm_at_1000_and_scaled_for_other_t():
    betas = schedules.get_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(betas), np.diff(betas)[0], rtol=1e-9)
    betas4k = schedules.get_beta_schedule("linear", 4000)
    assert betas4k[0] == pytest.approx(2.5e-5) and betas4k[-1] == pytest.approx(0.005)


def test_cosine_follows_alpha_bar_closed_form_and_clips():
    T, s = 1000, 0.008
    sched = schedules.make_schedule("cosine", T)

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):
        assert float(sched.alphas_cumprod[t]) == pytest.approx(f((t + 1) / T) / f(0), rel=1e-5)
    betas = schedules.get_beta_schedule("cosine", T)
    assert betas.max() == pytest.approx(0.999) and np.all(np.diff(betas) >= 0)


def test_quadratic_and_sigmoid_shapes():
    quad = schedules.get_beta_schedule("quadratic", 1000)
    np.testing.assert_allclose(np.diff(np.sqrt(quad)), np.diff(np.sqrt(quad))[0], rtol=1e-9)
    assert quad[0] == pytest.approx(1e-4) and quad[-1] == pytest.approx(0.02)
    sig = schedules.get_beta_schedule("sigmoid", 1000)
    assert np.all(np.diff(sig) > 0)
    assert 1e-4 < sig[0] < 1e-4 + 0.02 * 0.003 and 0.02 * 0.997 < sig[-1] < 0.02
    # sigmoid is symmetric about the midpoint
    np.testing.assert_allclose(sig + sig[::-1], 1e-4 + 0.02, rtol=1e-12)


def test_tables_match_float64_closed_forms():
    T = 4000
    betas = schedules.get_beta_schedule("linear", T)
    sched = schedules.make_schedule("linear", T)
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    expected = {
        "alphas_cumprod": ab,
        "alphas_cumprod_prev": ab_prev,
        "alphas_cumprod_next": np.concatenate([ab[1:], [0.0]]),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ab - 1),
        "log_one_minus_alphas_cumprod": np.log1p(-ab),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
        "posterior_mean_coef1": betas * np.sqrt(ab_prev) / (1 - ab),
        "posterior_mean_coef2": (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab),
        "fixed_large_variance": np.concatenate([[post_var[1]], betas[1:]]),
    }
    for name, want in expected.items():
        got = getattr(sched, name)
        assert got.dtype == jnp.float32, name
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-30, err_msg=name)
    # The point of float64: in float32, 1 - alpha_bar near t=0 loses its digits to cancellation.
    naive = np.sqrt(1 / np.cumprod((1 - betas).astype(np.float32)) - 1)
    assert np.max(np.abs(naive / expected["sqrt_recipm1_alphas_cumprod"] - 1)) > 1e-4


def test_schedule_is_a_frozen_pytree_usable_under_jit():
    sched = schedules.make_schedule("linear", 100)
    assert sched.num_timesteps == 100
    leaves = jax.tree_util.tree_leaves(sched)
    assert len(leaves) == 17 and all(leaf.shape == (100,) for leaf in leaves)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sched.betas = jnp.zeros(100)

    @jax.jit
    def f(s, t):
        return schedules.extract(s.alphas_cumprod, t, 4)

    out = f(sched, jnp.array([0, 99]))
    assert out.shape == (2, 1, 1, 1)
    assert float(out[1, 0, 0, 0]) == pytest.approx(float(sched.alphas_cumprod[99]))


def test_space_timesteps_ddim_and_sections():
    assert schedules.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert schedules.space_timesteps(1000, "ddim1000") == list(range(1000))
    kept = schedules.space_timesteps(300, "10,15,20")
    assert len(kept) == 45
    first, second, third = kept[:10], kept[10:25], kept[25:]
    assert first[0] == 0 and first[-1] == 99
    assert second[0] == 100 and second[-1] == 199
    assert third[0] == 200 and third[-1] == 299
    assert schedules.space_timesteps(1000, 10) == schedules.space_timesteps(1000, "10")
    # ties (j * stride a half-integer) fall where improved-diffusion's running sum puts them
    assert 25 in schedules.space_timesteps(50, "25") and 24 not in schedules.space_timesteps(
        50, "25"
    )
    assert 499 in schedules.space_timesteps(1000, "21")
    # uneven split: the first sections get the extra step
    assert schedules.space_timesteps(10, [1, 1, 1]) == [0, 4, 7]


@pytest.mark.parametrize("bad", ["ddim7x", "ddim3000", "a,b", "0", "5000"])
def test_space_timesteps_rejects_bad_specs(bad):
    with pytest.raises(ValueError):
        schedules.space_timesteps(1000, bad)


@pytest.mark.parametrize("spec", ["ddim25", "10,15,20", "50"])
def test_respaced_schedule_keeps_alpha_bar_at_kept_steps(spec):
    base = schedules.make_schedule("cosine", 1000)
    fast = schedules.make_schedule("cosine", 1000, respacing=spec)
    kept = np.asarray(fast.timestep_map)
    assert kept.tolist() == schedules.space_timesteps(1000, spec)
    assert fast.num_timesteps == len(kept)
    np.testing.assert_allclose(
        np.asarray(fast.alphas_cumprod), np.asarray(base.alphas_cumprod)[kept], rtol=1e-5
    )
    # the first kept step's beta is 1 - alpha_bar at that step
    alpha_bar64 = np.cumprod(1 - schedules.get_beta_schedule("cosine", 1000))
    assert float(fast.betas[0]) == pytest.approx(1 - alpha_bar64[kept[0]], rel=1e-5)


def test_unrespaced_map_is_identity_and_full_respacing_is_a_no_op():
    base = schedules.make_schedule("linear", 200)
    np.testing.assert_array_equal(np.asarray(base.timestep_map), np.arange(200))
    same = schedules.make_schedule("linear", 200, respacing="200")
    np.testing.assert_allclose(np.asarray(same.betas), np.asarray(base.betas), rtol=1e-5)


def test_clear_errors():
    with pytest.raises(ValueError, match="Unknown beta schedule"):
        schedules.get_beta_schedule("cosin", 1000)
    with pytest.raises(ValueError, match="must lie in"):
        schedules.make_schedule("linear", 10)  # 0.02 * 100 > 1
    with pytest.raises(ValueError, match=">= 2"):
        schedules.make_schedule("cosine", 1)
    with pytest.raises(ValueError, match="at least 2"):
        schedules.respace_betas(schedules.get_beta_schedule("linear", 1000), [5])
