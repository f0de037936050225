import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import timestep_sampling as ts


def test_uniform_covers_every_step_with_unit_weights():
    t, w = ts.sample_uniform(jax.random.key(0), 20_000, 10)
    counts = np.bincount(np.asarray(t), minlength=10)
    assert counts.shape == (10,) and counts.min() > 1800  # 2000 expected per step
    np.testing.assert_array_equal(w, 1.0)


def test_importance_sampling_is_uniform_until_every_step_has_a_full_history():
    hist = ts.init_loss_history(4, history=2)
    hist = ts.update_loss_history(hist, jnp.array([0, 0, 1, 1, 2, 2, 3]), jnp.arange(7.0))
    np.testing.assert_allclose(ts.importance_probs(hist), 0.25)
    hist = ts.update_loss_history(hist, jnp.array([3]), jnp.array([7.0]))
    assert not np.allclose(ts.importance_probs(hist), 0.25)


def test_probs_follow_the_loss_second_moment_and_weights_are_unbiased():
    num_t, u = 5, 0.001
    hist = ts.init_loss_history(num_t, history=3, uniform_prob=u)
    losses_per_t = jnp.array([1.0, 2.0, 3.0, 4.0, 10.0])
    for _ in range(3):
        hist = ts.update_loss_history(hist, jnp.arange(num_t), losses_per_t)
    probs = np.asarray(ts.importance_probs(hist))
    want = np.asarray(losses_per_t) / float(losses_per_t.sum()) * (1 - u) + u / num_t
    np.testing.assert_allclose(probs, want, rtol=1e-6)
    t, w = ts.sample_importance(jax.random.key(1), 50_000, hist)
    np.testing.assert_allclose(w, 1.0 / (num_t * probs[np.asarray(t)]), rtol=1e-6)
    # E_p[w L_t] = mean_t L_t: the weighted loss is an unbiased estimate of the uniform mean
    estimate = float(jnp.mean(w * losses_per_t[t]))
    assert estimate == pytest.approx(float(losses_per_t.mean()), rel=0.02)
    freq = np.bincount(np.asarray(t), minlength=num_t) / 50_000
    np.testing.assert_allclose(freq, probs, atol=0.01)


def test_history_is_a_ring_buffer_applied_in_batch_order():
    hist = ts.init_loss_history(2, history=3)
    hist = ts.update_loss_history(hist, jnp.array([1, 1, 1, 1, 0]), jnp.array([1.0, 2, 3, 4, 9]))
    np.testing.assert_array_equal(hist.losses[1], [2.0, 3.0, 4.0])  # oldest (1.0) dropped
    np.testing.assert_array_equal(hist.losses[0], [9.0, 0.0, 0.0])
    np.testing.assert_array_equal(hist.counts, [1, 3])
    jitted = jax.jit(ts.update_loss_history)(hist, jnp.array([0]), jnp.array([5.0]))
    np.testing.assert_array_equal(jitted.losses[0], [9.0, 5.0, 0.0])


def test_bad_settings_raise():
    with pytest.raises(ValueError):
        ts.init_loss_history(10, history=0)
