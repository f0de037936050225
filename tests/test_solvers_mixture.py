"""Every fast solver at about 20 network evaluations, driven by the exact denoiser of a 2-D
Gaussian mixture, draws samples that a kernel two-sample test cannot tell from the data; a
solver with one order term dropped is told apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import schedules
from diffusion_jax.evaluation import two_sample
from diffusion_jax.sampling import generate, samplers, solvers

N, STD = 1500, 0.15
ANGLES = np.arange(8) * np.pi / 4
MEANS = 1.5 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)  # 8 equal components
SCHEDULE = schedules.make_schedule("linear", 1000)
LOG_SIGMA = 0.5 * np.log(1 - np.asarray(SCHEDULE.alphas_cumprod, np.float64))
LOG_SIGMA -= 0.5 * np.log(np.asarray(SCHEDULE.alphas_cumprod, np.float64))
DENOISER = samplers.Denoiser("eps", "fixed_large", clip_denoised=False)


def exact_eps(params, x_t, t, y=None):
    """E[eps | x_t] of the mixture at (fractional) timestep t: log sigma interpolated over t."""
    del params, y
    sigma_ve = jnp.exp(jnp.interp(t, jnp.arange(1000.0), jnp.asarray(LOG_SIGMA)))[:, None]
    a = 1.0 / jnp.sqrt(1.0 + sigma_ve**2)  # x_t = a x_0 + s eps, a^2 + s^2 = 1
    s = sigma_ve * a
    var = a**2 * STD**2 + s**2
    mu = jnp.asarray(MEANS, jnp.float32)
    logits = -jnp.sum((x_t[:, None, :] - a[:, None] * mu) ** 2, -1) / (2 * var)
    r = jax.nn.softmax(logits, axis=-1)  # responsibilities [B, 8]
    x0 = r @ mu + (a * STD**2 / var) * (x_t - a * (r @ mu))
    return (x_t - a * x0) / s


def _data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return MEANS[rng.integers(0, 8, N)] + STD * rng.standard_normal((N, 2))


def _p_value(x) -> float:
    return two_sample.mmd_permutation_test(np.asarray(x), _data(1), num_permutations=100)[1]


# Steps giving about 20 network evaluations (Heun: 2 steps - 1).
CASES = {name: 20 for name in generate.FAST_SAMPLERS} | {"heun": 10}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_solver_at_20_evaluations_passes_the_two_sample_test(name):
    fn, settings = generate.FAST_SAMPLERS[name]
    key = jax.random.PRNGKey(3)
    x = fn(exact_eps, None, SCHEDULE, (N, 2), key, steps=CASES[name], denoiser=DENOISER, **settings)
    assert np.all(np.isfinite(x))
    assert _p_value(x) > 0.01, name


def test_a_solver_with_an_order_term_dropped_fails_it(monkeypatch):
    real = solvers._plan

    def broken(*args, **kwargs):  # DPM-Solver++ 2M without its D_{i-1} term
        plan = real(*args, **kwargs)
        return {**plan, "pm": plan["pm"].at[:, 1:].set(0.0)}

    monkeypatch.setattr(solvers, "_plan", broken)
    x = solvers.sample_dpmpp(exact_eps, None, SCHEDULE, (N, 2), jax.random.PRNGKey(3), steps=20,
                             denoiser=DENOISER)  # fmt: skip
    assert _p_value(x) <= 0.01
