import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import diffusion, schedules

SCHED = schedules.make_schedule("linear", 1000)


def _data(key, shape=(4, 8, 8, 3)):
    return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)


def test_q_sample_monte_carlo_moments():
    n, t = 200_000, 300
    x0 = jnp.full((n, 1), 0.7)
    noise = jax.random.normal(jax.random.key(0), (n, 1))
    x_t = diffusion.q_sample(SCHED, x0, jnp.full((n,), t), noise=noise)
    ab = float(SCHED.alphas_cumprod[t])
    # the sample mean has standard error sqrt((1 - ab) / n) ~ 2e-3; allow 5 of them
    assert float(jnp.mean(x_t)) == pytest.approx(np.sqrt(ab) * 0.7, abs=5 * np.sqrt((1 - ab) / n))
    assert float(jnp.var(x_t)) == pytest.approx(1 - ab, rel=0.02)
    mean, var, log_var = diffusion.q_mean_variance(SCHED, x0[:1], jnp.array([t]))
    assert float(mean[0, 0]) == pytest.approx(np.sqrt(ab) * 0.7, rel=1e-5)
    assert float(var[0, 0]) == pytest.approx(1 - ab, rel=1e-5)
    assert float(log_var[0, 0]) == pytest.approx(np.log(1 - ab), rel=1e-5)


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_posterior_is_bayes_rule_on_a_grid(t):
    """q(x_{t-1}|x_t,x_0) is proportional to q(x_t|x_{t-1}) q(x_{t-1}|x_0): normalise on a grid."""
    betas = schedules.get_beta_schedule("linear", 1000)
    ab = np.cumprod(1 - betas)
    x0, xt = 0.4, -0.3
    grid = np.linspace(-3.0, 3.0, 2_000_001)  # spacing 3e-6, well under the narrowest sd (7e-3)
    log_prior = -0.5 * (grid - np.sqrt(ab[t - 1]) * x0) ** 2 / (1 - ab[t - 1])
    log_lik = -0.5 * (xt - np.sqrt(1 - betas[t]) * grid) ** 2 / betas[t]
    w = np.exp(log_prior + log_lik - np.max(log_prior + log_lik))
    w /= w.sum()
    grid_mean = np.sum(w * grid)
    grid_var = np.sum(w * (grid - grid_mean) ** 2)
    mean, var, log_var = diffusion.q_posterior_mean_variance(
        SCHED, jnp.full((1, 1), xt), jnp.array([t]), x_start=jnp.full((1, 1), x0)
    )
    assert float(mean[0, 0]) == pytest.approx(grid_mean, rel=1e-4, abs=1e-6)
    assert float(var[0, 0]) == pytest.approx(grid_var, rel=1e-3)
    assert float(log_var[0, 0]) == pytest.approx(np.log(grid_var), abs=1e-3)


def test_posterior_at_t0_has_zero_variance_and_clipped_log():
    _, var, log_var = diffusion.q_posterior_mean_variance(
        SCHED, jnp.zeros((1, 1)), jnp.array([0]), x_start=jnp.zeros((1, 1))
    )
    assert float(var[0, 0]) == 0.0
    assert float(log_var[0, 0]) == pytest.approx(float(jnp.log(SCHED.posterior_variance[1])))


def test_parameterisation_conversions_round_trip():
    k0, k1, k2 = jax.random.split(jax.random.key(1), 3)
    x0, eps = _data(k0), jax.random.normal(k1, (4, 8, 8, 3))
    t = jax.random.randint(k2, (4,), 0, 1000)
    x_t = diffusion.q_sample(SCHED, x0, t, noise=eps)
    tol = dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(diffusion.predict_xstart_from_eps(SCHED, x_t, t, eps=eps), x0, **tol)
    np.testing.assert_allclose(
        diffusion.predict_eps_from_xstart(SCHED, x_t, t, x_start=x0), eps, **tol
    )
    v = diffusion.get_v(SCHED, x0, t, eps=eps)
    np.testing.assert_allclose(diffusion.predict_xstart_from_v(SCHED, x_t, t, v=v), x0, **tol)
    np.testing.assert_allclose(diffusion.predict_eps_from_v(SCHED, x_t, t, v=v), eps, **tol)
    for mean_type, out in (("eps", eps), ("x0", x0), ("v", v)):
        np.testing.assert_allclose(
            diffusion.predict_xstart(SCHED, x_t, t, output=out, mean_type=mean_type), x0, **tol
        )
        np.testing.assert_allclose(
            diffusion.training_target(SCHED, x0, t, noise=eps, mean_type=mean_type), out, rtol=1e-6
        )


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_p_mean_variance_with_the_true_output_is_the_true_posterior(mean_type):
    k0, k1, k2 = jax.random.split(jax.random.key(2), 3)
    x0, eps = _data(k0), jax.random.normal(k1, (4, 8, 8, 3))
    t = jax.random.randint(k2, (4,), 1, 1000)
    x_t = diffusion.q_sample(SCHED, x0, t, noise=eps)
    target = diffusion.training_target(SCHED, x0, t, noise=eps, mean_type=mean_type)
    out = diffusion.p_mean_variance(
        SCHED,
        x_t,
        t,
        model_output=target,
        mean_type=mean_type,
        var_type="fixed_small",
        clip_denoised=True,
    )
    true_mean, true_var, true_log_var = diffusion.q_posterior_mean_variance(
        SCHED, x_t, t, x_start=x0
    )
    np.testing.assert_allclose(out["mean"], true_mean, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(out["variance"], jnp.broadcast_to(true_var, x0.shape), rtol=1e-6)
    np.testing.assert_allclose(out["pred_xstart"], x0, atol=2e-3)
    assert out["log_variance"].shape == x0.shape


def test_variance_types():
    x_t = jnp.zeros((3, 2, 2, 1))
    t = jnp.array([0, 1, 700])
    fixed_large = diffusion.p_mean_variance(SCHED, x_t, t, model_output=x_t, var_type="fixed_large")
    betas = np.asarray(SCHED.betas)
    post = np.asarray(SCHED.posterior_variance)
    # fixed_large is beta_t, except at t=0 where the reference code uses beta~_1
    np.testing.assert_allclose(
        fixed_large["variance"][:, 0, 0, 0], [post[1], betas[1], betas[700]], rtol=1e-6
    )
    np.testing.assert_allclose(
        fixed_large["log_variance"], jnp.log(fixed_large["variance"]), rtol=1e-5
    )
    fixed_small = diffusion.p_mean_variance(SCHED, x_t, t, model_output=x_t, var_type="fixed_small")
    np.testing.assert_allclose(fixed_small["variance"][:, 0, 0, 0], post[[0, 1, 700]], rtol=1e-6)
    # learned_range: v = 1 gives log beta_t, v = -1 the clipped log posterior variance
    for v, want in (
        (1.0, np.log(betas[[0, 1, 700]])),
        (-1.0, np.asarray(SCHED.posterior_log_variance_clipped)[[0, 1, 700]]),
    ):
        out = diffusion.p_mean_variance(
            SCHED,
            x_t,
            t,
            model_output=jnp.concatenate([x_t, jnp.full_like(x_t, v)], -1),
            var_type="learned_range",
        )
        np.testing.assert_allclose(out["log_variance"][:, 0, 0, 0], want, rtol=1e-5)
    learned = diffusion.p_mean_variance(
        SCHED,
        x_t,
        t,
        model_output=jnp.concatenate([x_t, jnp.full_like(x_t, -3.0)], -1),
        var_type="learned",
    )
    np.testing.assert_allclose(learned["variance"], np.exp(-3.0), rtol=1e-6)


def test_clip_denoised_bounds_pred_xstart():
    x_t = jnp.full((1, 2, 2, 1), 5.0)
    t = jnp.array([10])
    kw = dict(model_output=x_t, mean_type="x0")
    clipped = diffusion.p_mean_variance(SCHED, x_t, t, clip_denoised=True, **kw)
    raw = diffusion.p_mean_variance(SCHED, x_t, t, clip_denoised=False, **kw)
    assert float(clipped["pred_xstart"].max()) == 1.0 and float(raw["pred_xstart"].max()) == 5.0


def test_p_sample_adds_no_noise_at_t0():
    x_t = jnp.ones((2, 2, 2, 1))
    t = jnp.array([0, 5])
    out = diffusion.p_mean_variance(
        SCHED, x_t, t, model_output=jnp.zeros_like(x_t), var_type="fixed_large"
    )
    noise = jnp.ones_like(x_t)
    x_prev = diffusion.p_sample(SCHED, out, t, noise=noise)
    np.testing.assert_allclose(x_prev[0], out["mean"][0])
    np.testing.assert_allclose(x_prev[1], out["mean"][1] + jnp.sqrt(out["variance"][1]), rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    x_t = jnp.zeros((1, 2, 2, 3))
    t = jnp.array([3])
    with pytest.raises(ValueError, match="2C=6"):
        diffusion.p_mean_variance(SCHED, x_t, t, model_output=x_t, var_type="learned_range")
    with pytest.raises(ValueError, match="C=3"):
        diffusion.p_mean_variance(
            SCHED, x_t, t, model_output=jnp.zeros((1, 2, 2, 6)), var_type="fixed_small"
        )
    with pytest.raises(ValueError, match="mean_type"):
        diffusion.p_mean_variance(SCHED, x_t, t, model_output=x_t, mean_type="epsilon")
    with pytest.raises(ValueError, match="var_type"):
        diffusion.p_mean_variance(SCHED, x_t, t, model_output=x_t, var_type="large")


def test_guidance_arithmetic():
    r = np.random.default_rng(0)
    c, u, g = (r.normal(size=(3, 4, 4)).astype(np.float32) for _ in range(3))
    cfg = diffusion.cfg_eps
    np.testing.assert_allclose(cfg(cond=c, uncond=u, scale=2.5), 3.5 * c - 2.5 * u, rtol=1e-5)
    np.testing.assert_array_equal(cfg(cond=c, uncond=u, scale=0.0), c)
    learned = np.asarray(
        diffusion.cfg_output(cond=c, uncond=u, scale=2.0, var_type="learned_range")
    )
    np.testing.assert_allclose(learned[..., :2], 3 * c[..., :2] - 2 * u[..., :2], rtol=1e-5)
    np.testing.assert_array_equal(learned[..., 2:], c[..., 2:])  # conditional variance kept
    var = np.abs(u)
    np.testing.assert_allclose(
        diffusion.condition_mean(c, variance=var, grad=g, scale=3.0), c + 3 * var * g, rtol=1e-6
    )
    np.testing.assert_allclose(
        diffusion.condition_eps(c, grad=g, scale=2.0, alpha_bar=0.36),
        c - 0.8 * 2.0 * g,
        rtol=1e-5,
        atol=1e-6,
    )
    # condition_score: x_0_hat re-derived from the guided eps
    sched = schedules.make_schedule("linear", 100)
    t = jnp.array([10, 50, 99])
    out = diffusion.p_mean_variance(sched, u, t, model_output=c, clip_denoised=False)
    new = diffusion.condition_score(sched, u, t, out=out, grad=g, scale=2.0)
    a = np.asarray(sched.alphas_cumprod, np.float64)[np.asarray(t)][:, None, None]
    eps = c - np.sqrt(1 - a) * 2.0 * g
    np.testing.assert_allclose(
        new["pred_xstart"], (u - np.sqrt(1 - a) * eps) / np.sqrt(a), rtol=1e-4, atol=1e-4
    )


def test_model_timesteps_map_respaced_steps_to_original_ones():
    fast = schedules.make_schedule("linear", 1000, respacing="ddim10")
    np.testing.assert_array_equal(diffusion.model_timesteps(fast, jnp.array([0, 9])), [0, 900])


def test_functions_jit_and_vmap():
    k0, k1 = jax.random.split(jax.random.key(3))
    x0, eps = _data(k0), jax.random.normal(k1, (4, 8, 8, 3))
    t = jnp.array([0, 1, 2, 999])
    jitted = jax.jit(diffusion.q_sample)(SCHED, x0, t, noise=eps)
    np.testing.assert_allclose(jitted, diffusion.q_sample(SCHED, x0, t, noise=eps), rtol=1e-6)
    per_example = jax.vmap(
        lambda a, b, c: diffusion.q_sample(SCHED, a[None], b[None], noise=c[None])[0]
    )
    np.testing.assert_allclose(per_example(x0, t, eps), jitted, rtol=1e-6)


def test_arrays_other_than_x_and_t_are_keyword_only():
    """The convention: (schedule, the array the distribution is about, t), the rest by keyword."""
    x, t = jnp.zeros((1, 2, 2, 1)), jnp.array([5])
    out = diffusion.p_mean_variance(SCHED, x, t, model_output=x)
    for call in (
        lambda: diffusion.q_sample(SCHED, x, t, x),
        lambda: diffusion.get_v(SCHED, x, t, x),
        lambda: diffusion.q_posterior_mean_variance(SCHED, x, t, x),
        lambda: diffusion.predict_xstart_from_eps(SCHED, x, t, x),
        lambda: diffusion.p_mean_variance(SCHED, x, t, x),
        lambda: diffusion.p_sample(SCHED, out, t, x),
        lambda: diffusion.ddim_step(SCHED, x, t, out, x),
        lambda: diffusion.cfg_eps(x, x, 1.0),
    ):
        with pytest.raises(TypeError, match="positional"):
            call()
