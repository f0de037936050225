"""Samplers against float64 references and against data whose optimal denoiser is known in closed
form: a 2-D Gaussian mixture, for which E[x_0 | x_t] is the posterior-weighted mix of each
component's Gaussian posterior mean, so the samplers can be checked without training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import diffusion, schedules
from diffusion_jax.evaluation import two_sample
from diffusion_jax.models.mlp import MLPDenoiser
from diffusion_jax.models.unet import make_apply_fn
from diffusion_jax.sampling import samplers as sampling

MEANS = np.array([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]])
STDS = np.array([0.3, 0.25, 0.35])
WEIGHTS = np.array([0.3, 0.3, 0.4])
N = 1000  # points per two-sample test: 1000 keeps each permutation test under 2 s
UNCLIPPED = sampling.Denoiser(clip_denoised=False)  # 2-D data, not images in [-1, 1]


def sample_mixture(rng, n):
    k = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
    return MEANS[k] + STDS[k, None] * rng.normal(size=(n, 2))


def mixture_apply_fn(base: schedules.Schedule, eps_scale=1.0):
    """The Bayes-optimal eps-predictor of the mixture, indexed by ORIGINAL timesteps (so it serves
    any respacing of `base`): x_0_hat = sum_k r_k(x_t) (mu_k + sqrt(a) s_k^2 (x_t - sqrt(a) mu_k)
    / (a s_k^2 + 1 - a)), eps_hat = (x_t - sqrt(a) x_0_hat) / sqrt(1 - a)."""
    abar = base.alphas_cumprod
    means, var0, logw = jnp.asarray(MEANS), jnp.asarray(STDS**2), jnp.log(jnp.asarray(WEIGHTS))

    def apply_fn(params, x_t, t, y=None):
        a = abar[t][:, None, None]  # [B, 1, 1]
        v = a * var0[None, :, None] + 1.0 - a  # [B, K, 1]: variance of x_t under component k
        diff = x_t[:, None, :] - jnp.sqrt(a) * means[None]  # [B, K, D]
        logp = logw - 0.5 * jnp.sum(diff**2 / v, -1) - jnp.log(v[..., 0])  # D=2: log v^(D/2)
        r = jax.nn.softmax(logp, axis=1)[..., None]  # [B, K, 1]
        x0 = jnp.sum(r * (means[None] + jnp.sqrt(a) * var0[None, :, None] * diff / v), 1)
        a = a[:, 0]
        return eps_scale * (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)

    return apply_fn


def mmd_p(samples, seed=0):
    truth = sample_mixture(np.random.default_rng(1000 + seed), len(samples))
    return two_sample.mmd_permutation_test(
        np.asarray(samples), truth, num_permutations=100, rng=np.random.default_rng(seed)
    )[1]


def linear_apply_fn(x_t, t, y=None):  # a smooth stand-in network: eps = 0.3 x_t + 0.01 t
    return 0.3 * x_t + 0.01 * t.astype(jnp.float32).reshape((-1,) + (1,) * (x_t.ndim - 1))


def toy_net(params, x_t, t, y=None):
    return linear_apply_fn(x_t, t, y)


# ----------------------------------------------------------------------------- float64 references


def _f64_tables(schedule):
    betas = np.asarray(schedule.betas, np.float64)
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    return betas, ab, ab_prev


def _noise(rng, t, shape):
    return np.asarray(jax.random.normal(jax.random.fold_in(rng, t), shape, jnp.float32), np.float64)


def _reference_chain(schedule, shape, rng, kind, eta=0.0):
    """The whole sampler in float64 numpy, with the sampler's own noise draws."""
    betas, ab, ab_prev = _f64_tables(schedule)
    tmap = np.asarray(schedule.timestep_map)
    num = len(betas)
    x = _noise(rng, num, shape)
    for t in range(num - 1, -1, -1):
        eps = 0.3 * x + 0.01 * tmap[t]
        x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
        z = _noise(rng, t, shape) if t > 0 else 0.0
        if kind == "ancestral":  # fixed_large: beta_t, with beta~_1 at t=0 (noise-free there)
            mean = (
                betas[t] * np.sqrt(ab_prev[t]) / (1 - ab[t]) * x0
                + (1 - ab_prev[t]) * np.sqrt(1 - betas[t]) / (1 - ab[t]) * x
            )
            x = mean + np.sqrt(betas[t]) * z
        else:
            sigma = eta * np.sqrt((1 - ab_prev[t]) / (1 - ab[t]) * (1 - ab[t] / ab_prev[t]))
            eps_re = (x - np.sqrt(ab[t]) * x0) / np.sqrt(1 - ab[t])
            x = np.sqrt(ab_prev[t]) * x0 + np.sqrt(1 - ab_prev[t] - sigma**2) * eps_re + sigma * z
    return x


@pytest.mark.parametrize(
    "kind,eta,respacing",
    [
        ("ancestral", 0.0, None),
        ("ancestral", 0.0, "5"),
        ("ddim", 0.0, None),
        ("ddim", 1.0, "ddimq5"),
    ],
)
def test_samplers_match_float64_reference_chain(kind, eta, respacing):
    # a well-conditioned process (alpha_bar_{T-1} ~ 0.1), so float32 rounding is not amplified
    betas = np.linspace(0.02, 0.3, 12)
    if respacing is None:
        sched = schedules.schedule_from_betas(betas)
    else:
        sched = schedules.schedule_from_betas(
            *schedules.respace_betas(betas, schedules.space_timesteps(12, respacing))
        )
    rng, shape = jax.random.key(3), (5, 3)
    kw = dict(denoiser=sampling.Denoiser("eps", "fixed_large", clip_denoised=False))
    if kind == "ancestral":
        got = sampling.sample_ancestral(toy_net, None, sched, shape, rng, **kw)
    else:
        got = sampling.sample_ddim(toy_net, None, sched, shape, rng, eta=eta, **kw)
    want = _reference_chain(sched, shape, rng, kind, eta)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
def test_ddim_step_matches_formula(eta):
    sched = schedules.make_schedule("linear", 1000)
    betas, ab, ab_prev = _f64_tables(sched)
    key = jax.random.key(0)
    x_t, eps, noise = (jax.random.normal(k, (4, 6)) for k in jax.random.split(key, 3))
    t = jnp.array([0, 1, 500, 999])
    out = diffusion.p_mean_variance(sched, x_t, t, model_output=eps, clip_denoised=False)
    got = np.asarray(diffusion.ddim_step(sched, x_t, t, out=out, noise=noise, eta=eta))
    x, e, z, tt = (np.asarray(v, np.float64) for v in (x_t, eps, noise, t))
    a, ap = ab[t][:, None], ab_prev[t][:, None]
    x0 = (x - np.sqrt(1 - a) * e) / np.sqrt(a)
    sigma = eta * np.sqrt((1 - ap) / (1 - a)) * np.sqrt(1 - a / ap)
    want = np.sqrt(ap) * x0 + np.sqrt(1 - ap - sigma**2) * e + (tt[:, None] > 0) * sigma * z
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # at t=0 the step returns x_0_hat exactly (no noise)
    np.testing.assert_allclose(got[0], np.asarray(out["pred_xstart"])[0], rtol=1e-6)

    # the reverse step: x_{t+1} = sqrt(ab_{t+1}) x0 + sqrt(1 - ab_{t+1}) eps, ab_T = 0
    ab_next = np.append(ab[1:], 0.0)[t][:, None]
    back = np.asarray(diffusion.ddim_reverse_step(sched, x_t, t, out=out))
    want = np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next) * e
    np.testing.assert_allclose(back, want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- respacing, keys


def test_full_respacing_equals_unrespaced_for_both_samplers():
    full = schedules.make_schedule("linear", 100)
    kept = schedules.make_schedule("linear", 100, respacing="100")
    kw = dict(denoiser=sampling.Denoiser("eps", "fixed_large", clip_denoised=True))
    key = jax.random.key(7)
    for fn in (sampling.sample_ancestral, sampling.sample_ddim):
        a = fn(toy_net, None, full, (4, 3), key, **kw)
        b = fn(toy_net, None, kept, (4, 3), key, **kw)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_same_key_same_sample_different_key_different():
    sched = schedules.make_schedule("cosine", 20)
    kw = dict(denoiser=UNCLIPPED)
    for fn, extra in ((sampling.sample_ancestral, {}), (sampling.sample_ddim, {"eta": 0.0})):
        a = fn(toy_net, None, sched, (3, 2), jax.random.key(1), **kw, **extra)
        b = fn(toy_net, None, sched, (3, 2), jax.random.key(1), **kw, **extra)
        c = fn(toy_net, None, sched, (3, 2), jax.random.key(2), **kw, **extra)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.abs(np.asarray(a) - np.asarray(c)).min() > 1e-4


def test_ddim_eta_one_is_ancestral_with_posterior_variance():
    sched = schedules.make_schedule("cosine", 50, respacing="ddim10")
    key = jax.random.key(4)
    ddim = sampling.sample_ddim(toy_net, None, sched, (6, 2), key, eta=1.0, denoiser=UNCLIPPED)
    small = sampling.Denoiser(var_type="fixed_small", clip_denoised=False)
    anc = sampling.sample_ancestral(toy_net, None, sched, (6, 2), key, denoiser=small)
    np.testing.assert_allclose(np.asarray(ddim), np.asarray(anc), rtol=1e-4, atol=1e-4)


def test_quadratic_spacing_is_ddims_quad_rule_made_distinct():
    steps = schedules.space_timesteps(1000, "ddimq50")
    raw = [int(s) for s in np.linspace(0, np.sqrt(800), 50) ** 2]
    assert len(steps) == 50 and steps[-1] == 800 and steps[:4] == [0, 1, 2, 3]
    assert all(b > a for a, b in zip(steps, steps[1:], strict=False))
    assert steps[10:] == raw[10:]  # past the crowded start the DDIM code's steps are kept as is
    assert schedules.space_timesteps(1000, "ddimq1000") == list(range(1000))
    sched = schedules.make_schedule("linear", 1000, respacing="ddimq50")
    np.testing.assert_array_equal(np.asarray(sched.timestep_map), steps)
    with pytest.raises(ValueError):
        schedules.space_timesteps(10, "ddimq11")


# ----------------------------------------------------------------------------- distributions


def test_ancestral_with_optimal_denoiser_samples_the_mixture():
    sched = schedules.make_schedule("cosine", 200)
    x = sampling.sample_ancestral(
        mixture_apply_fn(sched), None, sched, (N, 2), jax.random.key(0), denoiser=UNCLIPPED
    )
    assert mmd_p(x, seed=0) > 0.05
    # the test has power: a denoiser whose eps is 30% too small leaves the samples too spread out
    bad = sampling.sample_ancestral(
        mixture_apply_fn(sched, 0.7), None, sched, (N, 2), jax.random.key(0), denoiser=UNCLIPPED
    )
    assert mmd_p(bad, seed=1) < 0.05


@pytest.mark.parametrize("respacing", ["ddim50", "ddimq50"])
def test_ddim_50_steps_with_optimal_denoiser_samples_the_mixture(respacing):
    base = schedules.make_schedule("linear", 1000)
    sched = schedules.make_schedule("linear", 1000, respacing=respacing)
    x = sampling.sample_ddim(
        mixture_apply_fn(base), None, sched, (N, 2), jax.random.key(1), denoiser=UNCLIPPED
    )
    assert mmd_p(x, seed=2) > 0.05


def test_slightly_wrong_denoiser_under_ddim_is_detected():
    base = schedules.make_schedule("linear", 1000)
    sched = schedules.make_schedule("linear", 1000, respacing="ddim50")
    # eps 10% too small: the deterministic sampler has no noise to correct it, and the test sees it
    x = sampling.sample_ddim(
        mixture_apply_fn(base, 0.9), None, sched, (N, 2), jax.random.key(1), denoiser=UNCLIPPED
    )
    assert mmd_p(x, seed=3) < 0.05


# ----------------------------------------------------------------------------- guidance


def test_cfg_makes_one_doubled_forward_call_per_step_and_w0_is_conditional():
    shapes, calls = [], []

    def net(params, x_t, t, y=None):
        shapes.append((x_t.shape, y.shape))  # at trace time
        jax.debug.callback(lambda: calls.append(1))  # at run time, once per step
        return 0.2 * x_t + 0.1 * y[:, None].astype(jnp.float32)

    sched = schedules.make_schedule("cosine", 12)
    y = jnp.array([0, 1, 2, 1])
    kw = dict(y=y, denoiser=UNCLIPPED)
    w0 = sampling.Guidance(cfg_scale=0.0, num_classes=3)
    guided = sampling.sample_ddim(net, None, sched, (4, 3), jax.random.key(0), guidance=w0, **kw)
    jax.block_until_ready(guided)
    assert shapes == [((8, 3), (8,))] and len(calls) == 12
    plain = sampling.sample_ddim(net, None, sched, (4, 3), jax.random.key(0), **kw)
    np.testing.assert_allclose(np.asarray(guided), np.asarray(plain), rtol=1e-6, atol=1e-6)
    # w > 0 moves away from the null-label prediction: eps~ = eps_c + w (eps_c - eps_u)
    w2 = sampling.Guidance(cfg_scale=2.0, num_classes=3)
    strong = sampling.sample_ddim(net, None, sched, (4, 3), jax.random.key(0), guidance=w2, **kw)
    assert not np.allclose(np.asarray(strong), np.asarray(plain))


def test_cfg_w0_equals_conditional_sampling_with_a_conditional_mlp():
    model = MLPDenoiser(hidden=32, num_layers=1, num_classes=3)
    x = jnp.zeros((6, 2))
    params = model.init(jax.random.key(0), x, jnp.zeros(6, jnp.int32), jnp.zeros(6, jnp.int32))
    apply_fn = make_apply_fn(model)
    sched = schedules.make_schedule("linear", 100, respacing="20")
    y, key = jnp.array([0, 1, 2, 0, 1, 2]), jax.random.key(5)
    kw = dict(y=y, denoiser=UNCLIPPED)
    fn = sampling.sample_ancestral  # (the DDIM sampler: the test above)
    plain = fn(apply_fn, params["params"], sched, (6, 2), key, **kw)
    guidance = sampling.Guidance(cfg_scale=0.0, num_classes=3)
    w0 = fn(apply_fn, params["params"], sched, (6, 2), key, guidance=guidance, **kw)
    np.testing.assert_allclose(np.asarray(w0), np.asarray(plain), rtol=1e-5, atol=1e-5)
    guidance = sampling.Guidance(cfg_scale=2.0, num_classes=3)
    w2 = fn(apply_fn, params["params"], sched, (6, 2), key, guidance=guidance, **kw)
    assert not np.allclose(np.asarray(w2), np.asarray(plain), atol=1e-3)
    with pytest.raises(ValueError, match="num_classes"):
        guidance = sampling.Guidance(cfg_scale=1.0)
        sampling.sample_ddim(apply_fn, params["params"], sched, (6, 2), key, y=y, guidance=guidance)


W_CLS = jnp.array([[3.0, -3.0, 0.0], [0.0, 0.0, 3.0]])  # logits = x @ W: 3 classes in 2-D


def _log_prob(x, y):
    return jnp.take_along_axis(jax.nn.log_softmax(x @ W_CLS), y[:, None], 1)[:, 0]


def test_classifier_guidance_raises_the_requested_class_probability():
    seen_t = []

    def cond_fn(x_t, t_model, y):
        jax.debug.callback(lambda t: seen_t.append(int(t[0])), t_model)
        return jax.grad(lambda x: jnp.sum(_log_prob(x, y)))(x_t)

    base = schedules.make_schedule("linear", 1000)
    sched = schedules.make_schedule("linear", 1000, respacing="ddim50")
    y = jnp.full((500,), 1, jnp.int32)  # class 1: x[0] very negative
    key, kw = jax.random.key(9), dict(y=y, denoiser=UNCLIPPED)
    apply_fn = mixture_apply_fn(base)
    guidance = sampling.Guidance(cond_fn=cond_fn, classifier_scale=3.0)
    for fn in (sampling.sample_ancestral, sampling.sample_ddim):
        plain = fn(apply_fn, None, sched, (500, 2), key, **kw)
        guided = fn(apply_fn, None, sched, (500, 2), key, guidance=guidance, **kw)
        p_plain = float(jnp.mean(jnp.exp(_log_prob(plain, y))))
        p_guided = float(jnp.mean(jnp.exp(_log_prob(guided, y))))
        assert p_guided > p_plain + 0.1, (fn.__name__, p_plain, p_guided)
    # the classifier is given the ORIGINAL timesteps of the respaced steps, in both samplers
    assert sorted(seen_t) == sorted(2 * list(range(0, 1000, 20)))


# ----------------------------------------------------------------------------- inversion, figures


def test_ddim_inversion_reconstructs_and_interpolation_endpoints_decode():
    base = schedules.make_schedule("linear", 1000)
    sched = base  # the eta=0 ODE is discretised: the error falls about as 1/steps (0.03 at 250)
    apply_fn = mixture_apply_fn(base)
    x0 = jnp.asarray(sample_mixture(np.random.default_rng(3), 16), jnp.float32)
    kw = dict(denoiser=UNCLIPPED)
    x_T = sampling.ddim_invert(apply_fn, None, sched, x0)
    # the latent looks like noise, and decoding it returns the data point
    assert 0.5 < float(jnp.std(x_T)) < 1.5
    back = sampling.sample_ddim(apply_fn, None, sched, x0.shape, jax.random.key(0), x_T=x_T, **kw)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x0), atol=1e-2)

    x_a, x_b = x0[:8], x0[8:]
    lambdas = jnp.array([0.0, 0.25, 0.5, 1.0])
    frames = sampling.interpolate(apply_fn, None, sched, x_a, x_b, lambdas, **kw)
    assert frames.shape == (4, 8, 2)
    np.testing.assert_allclose(np.asarray(frames[0]), np.asarray(back[:8]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(frames[-1]), np.asarray(back[8:]), atol=1e-5)
    # slerp at lambda 0 / 1 gives the endpoint latents, and keeps the norm of equal-norm rows
    z = sampling.slerp(x_T[:8], x_T[8:], lambdas)
    np.testing.assert_allclose(np.asarray(z[0]), np.asarray(x_T[:8]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(z[-1]), np.asarray(x_T[8:]), rtol=1e-5, atol=1e-6)
    u, v = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([[0.0, 1.0], [2.0, 0.0]])
    h = np.sqrt(0.5)
    mid = sampling.slerp(u, v, jnp.array([0.5]))[0]
    np.testing.assert_allclose(np.asarray(mid), [[h, h], [2 * h, 2 * h]], rtol=1e-5)
    # the same frames from the latents themselves
    again = sampling.interpolate(
        apply_fn, None, sched, x_T[:8], x_T[8:], lambdas, latents=True, **kw
    )
    np.testing.assert_allclose(np.asarray(again), np.asarray(frames), atol=1e-6)


def test_progressive_x0_snapshots_end_at_the_sample():
    sched = schedules.make_schedule("cosine", 200)
    apply_fn, key = mixture_apply_fn(sched), jax.random.key(11)
    x0, snaps = sampling.progressive_x0(
        apply_fn, None, sched, (64, 2), key, num_snapshots=7, denoiser=UNCLIPPED
    )
    assert snaps.shape == (7, 64, 2)
    np.testing.assert_array_equal(np.asarray(snaps[-1]), np.asarray(x0))
    # the same chain as sample_ancestral for the same key
    full = sampling.sample_ancestral(apply_fn, None, sched, (64, 2), key, denoiser=UNCLIPPED)
    np.testing.assert_allclose(np.asarray(x0), np.asarray(full), rtol=1e-5, atol=1e-5)
    # early predictions are near the data mean, late ones spread out over the components
    spread = np.asarray(jnp.std(snaps, axis=1).mean(-1))
    assert spread[0] < spread[-1]


def test_sampler_settings_are_validated_hashable_and_scales_do_not_recompile():
    for bad in (dict(mean_type="epsilon"), dict(var_type="large"), dict(clip_denoised="yes")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            sampling.Denoiser(**bad)
    for bad, match in ((dict(num_classes=0), "num_classes"), (dict(cond_fn=1.0), "cond_fn")):
        with pytest.raises(ValueError, match=match):
            sampling.Guidance(**bad)
    assert hash(sampling.Denoiser()) == hash(sampling.Denoiser(mean_type="eps"))
    hash(sampling.Guidance(cfg_scale=1.0, num_classes=3, cond_fn=toy_net))  # jit-static capable
    sched, y = schedules.make_schedule("cosine", 5), jnp.array([0, 1])
    with pytest.raises(ValueError, match="labels y"):
        sampling.sample_ddim(toy_net, None, sched, (2, 2), jax.random.key(0),
                             guidance=sampling.Guidance(cfg_scale=1.0, num_classes=2))  # fmt: skip

    # the two scales are traced: a new value reuses the compiled sampler and changes the sample
    def net(params, x_t, t, y=None):
        return 0.2 * x_t + 0.1 * y[:, None].astype(jnp.float32)

    samples = []
    for w in (1.0, 2.0):
        guidance = sampling.Guidance(cfg_scale=w, num_classes=2)
        samples.append(sampling.sample_ddim(net, None, sched, (2, 2), jax.random.key(0), y=y,
                                            denoiser=UNCLIPPED, guidance=guidance))  # fmt: skip
        if w == 1.0:
            compiled = sampling.sample_ddim._cache_size()
    assert sampling.sample_ddim._cache_size() == compiled
    assert not np.allclose(np.asarray(samples[0]), np.asarray(samples[1]))
