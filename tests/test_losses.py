import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import diffusion, losses, schedules

SCHED = schedules.make_schedule("linear", 1000)


def _normal_cdf(x):
    return 0.5 * (1 + np.vectorize(math.erf)(np.asarray(x, np.float64) / math.sqrt(2)))


def test_normal_kl_matches_numerical_integration():
    m1, lv1, m2, lv2 = 0.3, -0.5, -0.2, 0.4
    x = np.linspace(-15, 15, 600_001)
    p = np.exp(-0.5 * (x - m1) ** 2 / np.exp(lv1)) / np.sqrt(2 * np.pi * np.exp(lv1))
    log_p = -0.5 * (x - m1) ** 2 / np.exp(lv1) - 0.5 * np.log(2 * np.pi * np.exp(lv1))
    log_q = -0.5 * (x - m2) ** 2 / np.exp(lv2) - 0.5 * np.log(2 * np.pi * np.exp(lv2))
    numeric = np.sum(p * (log_p - log_q)) * (x[1] - x[0])
    assert float(losses.normal_kl(m1, lv1, m2, lv2)) == pytest.approx(numeric, rel=1e-5)


def test_normal_kl_nonnegative_and_zero_only_for_equal_gaussians():
    k = jax.random.split(jax.random.key(0), 4)
    m1, m2 = jax.random.normal(k[0], (10_000,)), jax.random.normal(k[1], (10_000,))
    lv1, lv2 = 3 * jax.random.normal(k[2], (10_000,)), 3 * jax.random.normal(k[3], (10_000,))
    kl = losses.normal_kl(m1, lv1, m2, lv2)
    assert float(kl.min()) > 0
    np.testing.assert_array_equal(losses.normal_kl(m1, lv1, m1, lv1), 0.0)
    # nearly equal variances keep their digits (expm1): KL ~ d^2 / 4 for a log-variance gap d
    assert float(losses.normal_kl(0.0, 1e-4, 0.0, 0.0)) == pytest.approx(0.25e-8, rel=1e-2)


def test_approx_cdf_is_close_to_the_normal_cdf():
    x = np.linspace(-6, 6, 1001)
    np.testing.assert_allclose(losses.approx_standard_normal_cdf(x), _normal_cdf(x), atol=2e-4)


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.97, -5.0), (-0.5, 0.5), (2.0, -1.0)])
def test_discretized_likelihood_sums_to_one_over_256_bins(mean, log_scale):
    bins = jnp.linspace(-1.0, 1.0, 256)  # the 256 pixel values in [-1, 1]
    logp = losses.discretized_gaussian_log_likelihood(
        bins, means=jnp.full(256, mean), log_scales=jnp.full(256, log_scale)
    )
    assert float(jnp.sum(jnp.exp(logp))) == pytest.approx(1.0, abs=1e-5)
    # an interior bin's probability is the Gaussian mass of [x - 1/255, x + 1/255]
    i = 100
    sd = math.exp(log_scale)
    exact = _normal_cdf((bins[i] + 1 / 255 - mean) / sd) - _normal_cdf(
        (bins[i] - 1 / 255 - mean) / sd
    )
    assert float(jnp.exp(logp[i])) == pytest.approx(float(exact), abs=3e-4)


def test_prior_bpd_is_about_1e5_for_linear_t1000():
    x0 = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3), minval=-1, maxval=1)
    got = losses.prior_bpd(SCHED, x0)
    ab = np.cumprod(1 - schedules.get_beta_schedule("linear", 1000))[-1]
    x = np.asarray(x0, np.float64).reshape(8, -1)
    exact = np.mean(0.5 * (ab * x**2 + (1 - ab) - 1 - np.log1p(-ab)), axis=1) / math.log(2)
    np.testing.assert_allclose(got, exact, rtol=1e-4)
    assert 1e-6 < float(got.mean()) < 3e-5


def test_vb_terms_are_zero_for_the_true_posterior_and_the_decoder_at_t0():
    k0, k1 = jax.random.split(jax.random.key(2))
    x0 = jnp.round(jax.random.uniform(k0, (2, 4, 4, 3), minval=-1, maxval=1) * 127.5) / 127.5
    eps = jax.random.normal(k1, x0.shape)
    t = jnp.array([0, 400])
    x_t = diffusion.q_sample(SCHED, x0, t, noise=eps)
    out = losses.vb_terms_bpd(
        SCHED,
        x_t,
        t,
        x_start=x0,
        model_output=eps,
        mean_type="eps",
        var_type="fixed_small",
        clip_denoised=False,
    )
    assert float(out["output"][1]) == pytest.approx(0.0, abs=1e-5)  # KL of equal Gaussians
    # t=0: the decoder NLL of x0 under N(mu~_0(x0_hat), beta~_1), x0_hat exact
    mean, _, log_var = diffusion.q_posterior_mean_variance(SCHED, x_t, t, x_start=x0)
    sd = np.exp(0.5 * np.asarray(log_var[0]))
    mu, x = np.asarray(mean[0], np.float64), np.asarray(x0[0], np.float64)
    upper = np.where(x > 0.999, 1.0, _normal_cdf((x + 1 / 255 - mu) / sd))
    lower = np.where(x < -0.999, 0.0, _normal_cdf((x - 1 / 255 - mu) / sd))
    exact_bpd = -np.mean(np.log(upper - lower)) / math.log(2)
    assert float(out["output"][0]) == pytest.approx(exact_bpd, rel=2e-3)


def _setup(channels_out=3, key=3):
    k = jax.random.split(jax.random.key(key), 4)
    x0 = jax.random.uniform(k[0], (4, 4, 4, 3), minval=-1, maxval=1)
    noise = jax.random.normal(k[1], x0.shape)
    t = jnp.array([0, 3, 500, 999])
    x_t = diffusion.q_sample(SCHED, x0, t, noise=noise)
    output = jax.random.normal(k[2], x0.shape[:-1] + (channels_out,))
    return x0, noise, t, x_t, output


def test_l_simple_is_the_eps_mse():
    x0, noise, t, x_t, output = _setup()
    terms = losses.losses_from_output(
        SCHED, x_t, t, x_start=x0, noise=noise, model_output=output, loss_type="mse"
    )
    np.testing.assert_allclose(
        terms["loss"], jnp.mean((noise - output) ** 2, axis=(1, 2, 3)), rtol=1e-6
    )
    assert "vb" not in terms
    perfect = losses.losses_from_output(
        SCHED, x_t, t, x_start=x0, noise=noise, model_output=noise, loss_type="mse"
    )
    np.testing.assert_array_equal(perfect["loss"], 0.0)


def test_kl_losses_and_rescaling():
    x0, noise, t, x_t, output = _setup()
    kw = dict(x_start=x0, model_output=output, mean_type="eps", var_type="fixed_large")
    kl = losses.losses_from_output(SCHED, x_t, t, noise=noise, loss_type="kl", **kw)
    rescaled = losses.losses_from_output(SCHED, x_t, t, noise=noise, loss_type="rescaled_kl", **kw)
    direct = losses.vb_terms_bpd(SCHED, x_t, t, clip_denoised=False, **kw)["output"]
    np.testing.assert_allclose(kl["loss"], direct, rtol=1e-6)
    np.testing.assert_allclose(rescaled["loss"], 1000 * direct, rtol=1e-6)
    assert float(kl["loss"].min()) > 0


def test_hybrid_loss_scales_vb_and_stops_its_gradient_through_the_mean():
    x0, noise, t, x_t, output = _setup(channels_out=6)
    kw = dict(x_start=x0, noise=noise, mean_type="eps", var_type="learned_range")
    sched = schedules.make_schedule("cosine", 4000)
    x_t = diffusion.q_sample(sched, x0, t, noise=noise)
    plain = losses.losses_from_output(sched, x_t, t, model_output=output, loss_type="mse", **kw)
    hybrid = losses.losses_from_output(sched, x_t, t, model_output=output, loss_type="hybrid", **kw)
    np.testing.assert_allclose(hybrid["vb"], plain["vb"] * 4.0, rtol=1e-6)  # T / 1000
    np.testing.assert_allclose(hybrid["loss"], hybrid["mse"] + hybrid["vb"], rtol=1e-6)

    def vb_sum(out):
        return jnp.sum(
            losses.losses_from_output(sched, x_t, t, model_output=out, loss_type="hybrid", **kw)[
                "vb"
            ]
        )

    grad = jax.grad(vb_sum)(output)
    np.testing.assert_array_equal(grad[..., :3], 0.0)  # the mean learns from the MSE only
    assert float(jnp.abs(grad[..., 3:]).max()) > 0
    kw = dict(x_start=x0, noise=noise, model_output=output[..., :3])
    with pytest.raises(ValueError, match="learned variance"):
        losses.losses_from_output(SCHED, x_t, t, loss_type="hybrid", **kw)
    with pytest.raises(ValueError, match="loss_type"):
        losses.losses_from_output(SCHED, x_t, t, loss_type="l2", **kw)


def _linear_model():
    """A tiny per-pixel linear network with a time input, enough to exercise apply_fn plumbing."""

    def apply_fn(params, x_t, t, y=None, *, rng=None, train=False):
        time = (t.astype(jnp.float32) / 1000.0)[:, None, None, None]
        out = x_t @ params["w"] + params["b"] + time * params["c"]
        if train and rng is not None:
            out = out + 0.0 * jax.random.normal(rng, out.shape)
        return out

    params = {"w": 0.1 * jnp.eye(3), "b": jnp.zeros(3), "c": jnp.ones(3)}
    return apply_fn, params


@pytest.mark.parametrize("loss_type", ["mse", "rescaled_mse", "kl", "rescaled_kl"])
def test_training_losses_jit_vmap_grad(loss_type):
    apply_fn, params = _linear_model()
    x0, noise, t, _, _ = _setup()

    def loss(p, x0, t, noise):
        terms = losses.training_losses(apply_fn, p, SCHED, x0, t, noise=noise, loss_type=loss_type)
        return jnp.mean(terms["loss"])

    eager = loss(params, x0, t, noise)
    jitted = jax.jit(loss)(params, x0, t, noise)
    assert float(jitted) == pytest.approx(float(eager), rel=1e-5)
    per_example = jax.vmap(lambda a, b, c: loss(params, a[None], b[None], c[None]))(x0, t, noise)
    np.testing.assert_allclose(jnp.mean(per_example), eager, rtol=1e-5)
    grads = jax.jit(jax.grad(loss))(params, x0, t, noise)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)
    # the gradient agrees with a finite difference along the bias
    h, d = 1e-3, jnp.array([1.0, -1.0, 0.5])
    fd = (
        loss({**params, "b": params["b"] + h * d}, x0, t, noise)
        - loss({**params, "b": params["b"] - h * d}, x0, t, noise)
    ) / (2 * h)
    assert float(jnp.dot(grads["b"], d)) == pytest.approx(float(fd), rel=2e-2, abs=1e-4)


def test_training_losses_give_the_model_the_original_timesteps_of_a_respaced_schedule():
    seen = []

    def apply_fn(params, x_t, t, y=None, *, rng=None, train=False):
        seen.append(np.asarray(t))
        return jnp.zeros_like(x_t)

    fast = schedules.make_schedule("linear", 1000, respacing="ddim10")
    x0 = jnp.zeros((2, 2, 2, 3))
    losses.training_losses(apply_fn, None, fast, x0, jnp.array([1, 9]), noise=x0)
    np.testing.assert_array_equal(seen[0], [100, 900])


def test_calc_bpd_loop_is_the_sum_of_per_t_terms_indexed_by_t():
    sched = schedules.make_schedule("cosine", 12)
    apply_fn, params = _linear_model()
    x0 = (
        jnp.round(jax.random.uniform(jax.random.key(4), (3, 4, 4, 3), minval=-1, maxval=1) * 127.5)
        / 127.5
    )
    rng = jax.random.key(5)
    out = losses.calc_bpd_loop(
        apply_fn, params, sched, x0, rng, mean_type="eps", var_type="fixed_large"
    )
    assert out["vb"].shape == (3, 12) and out["mse"].shape == (3, 12)
    np.testing.assert_allclose(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"], rtol=1e-6)
    np.testing.assert_allclose(out["prior_bpd"], losses.prior_bpd(sched, x0), rtol=1e-6)
    assert float(out["vb"].min()) >= 0  # KLs and a discrete NLL are all non-negative
    for t in (0, 5, 11):  # column t is the term of step t, with noise fold_in(rng, t)
        noise = jax.random.normal(jax.random.fold_in(rng, t), x0.shape)
        t_b = jnp.full((3,), t)
        x_t = diffusion.q_sample(sched, x0, t_b, noise=noise)
        term = losses.vb_terms_bpd(
            sched,
            x_t,
            t_b,
            x_start=x0,
            model_output=apply_fn(params, x_t, t_b),
            mean_type="eps",
            var_type="fixed_large",
        )
        np.testing.assert_allclose(out["vb"][:, t], term["output"], rtol=1e-5)
        eps = diffusion.predict_eps_from_xstart(sched, x_t, t_b, x_start=term["pred_xstart"])
        np.testing.assert_allclose(
            out["mse"][:, t], jnp.mean((eps - noise) ** 2, axis=(1, 2, 3)), rtol=1e-4
        )


def test_hybrid_loss_trains_the_unet_end_to_end():
    from diffusion_jax.models import UNet, make_apply_fn

    model = UNet(
        ch=32,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=(),
        dropout=0.1,
        learned_variance=True,
    )
    sched = schedules.make_schedule("cosine", 100)
    x0 = jax.random.uniform(jax.random.key(6), (2, 8, 8, 3), minval=-1, maxval=1)
    t = jnp.array([0, 57])
    params = model.init(jax.random.key(7), x0, t)["params"]
    apply_fn = make_apply_fn(model)
    noise = jax.random.normal(jax.random.key(8), x0.shape)

    @jax.jit
    def loss(p):
        terms = losses.training_losses(
            apply_fn,
            p,
            sched,
            x0,
            t,
            noise=noise,
            rng=jax.random.key(9),
            loss_type="hybrid",
            var_type="learned_range",
        )
        return jnp.mean(terms["loss"])

    value, grads = jax.value_and_grad(loss)(params)
    assert bool(jnp.isfinite(value)) and float(value) > 0
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_equal_shapes(grads, params)
    assert float(jnp.abs(grads["conv_out"]["kernel"]).max()) > 0
