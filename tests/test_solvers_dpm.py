"""DPM-Solver++ and UniPC (`sampling.solvers`) and the spacings (`core.spacing`) against diffusers.

tests/data/solver_reference.npz was written once by experiments/checks/solver_reference.py (its
docstring says how each scheduler was driven; the diffusers version is in the file): diffusers'
timesteps, sigmas and every intermediate sample of DPM++ 2M / 3M / 2S and UniPC bh1 / bh2 of
orders 2 and 3, for several spacings, step counts, thresholding and both beta schedules, on that
script's `mixture_eps` (the exact eps of a Gaussian-mixture data distribution), loaded from the
script here (numpy only) and run inside our compiled scans through `jax.pure_callback`.
Achieved: |ours - diffusers| <= 2.2e-6 for |x| <= 2.4 on every state of every case (float32).
"""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import schedules, spacing
from diffusion_jax.sampling import Denoiser, Guidance, solvers

ROOT = Path(__file__).resolve().parents[1]
REF = np.load(ROOT / "tests" / "data" / "solver_reference.npz")
CASES = json.loads(str(REF["cases"]))
_spec = importlib.util.spec_from_file_location(
    "solver_reference", ROOT / "experiments" / "checks" / "solver_reference.py"
)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
SCHEDS = {name: schedules.make_schedule(name, 1000) for name in ("linear", "cosine")}
UNCLIPPED = Denoiser(clip_denoised=False)  # diffusers' schedulers do not clip x_0_hat
TOL = dict(rtol=1e-5, atol=5e-6)  # float32 rounding; |x| <= 2.4 here


def _mixture_apply(alphas_cumprod):
    ab = np.asarray(alphas_cumprod)

    def apply_fn(params, x_t, t, y=None):
        out = jax.ShapeDtypeStruct(x_t.shape, jnp.float32)
        return jax.pure_callback(lambda x, s: reference.mixture_eps(x, s, ab), out, x_t, t)

    return apply_fn


APPLY = {name: _mixture_apply(sched.alphas_cumprod) for name, sched in SCHEDS.items()}


def _run(case, **kw):
    kw.update(steps=case["steps"], order=case["order"], spacing=case["spacing"])
    kw.update(steps_offset=case["steps_offset"], thresholding=case["thresholding"])
    if case["solver"] == "unipc":
        sampler, kw = solvers.sample_unipc, dict(kw, variant=case["variant"])
    else:
        sampler = solvers.sample_dpmpp
        kw.update(method=case["method"], lower_order_final=case["lower_order_final"])
    sched = SCHEDS[case["schedule"]]
    key = jax.random.key(reference.SEED)
    return sampler(
        APPLY[case["schedule"]], None, sched, reference.SHAPE, key, denoiser=UNCLIPPED, **kw
    )


def test_the_reference_used_our_draw():
    key = jax.random.fold_in(jax.random.key(reference.SEED), 1000)
    np.testing.assert_array_equal(REF["x_T"], jax.random.normal(key, reference.SHAPE))
    assert str(REF["versions"]).startswith("diffusers ")


@pytest.mark.parametrize("name", sorted(CASES))
def test_spacing_equals_diffusers(name):
    case = CASES[name]
    ab = np.asarray(SCHEDS[case["schedule"]].alphas_cumprod, np.float64)
    args = (case["spacing"], ab, case["steps"])
    t, alpha, sigma = spacing.noise_levels(*args, steps_offset=case["steps_offset"])
    np.testing.assert_array_equal(t, spacing.timesteps(*args, steps_offset=case["steps_offset"]))
    np.testing.assert_array_equal(np.round(t), REF[f"{name}/timesteps"])  # diffusers rounds
    np.testing.assert_allclose(t, REF[f"{name}/t_model"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(sigma / alpha, REF[f"{name}/sigmas"][:-1], rtol=1e-6)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-12)


def test_spacing_helpers():
    ab = np.asarray(SCHEDS["linear"].alphas_cumprod, np.float64)
    table = spacing.schedule_sigmas(ab)
    np.testing.assert_allclose(table, np.sqrt((1 - ab) / ab), rtol=1e-15)
    np.testing.assert_allclose(spacing.sigma_to_t(table[[0, 7, 999]], ab), [0, 7, 999], atol=1e-9)
    np.testing.assert_allclose(spacing.sigma_to_t([1e-9, 1e9], ab), [0, 999])  # clipped
    karras = spacing.karras_sigmas(0.1, 80.0, 5, rho=7.0)
    assert karras[0] == pytest.approx(80.0) and karras[-1] == pytest.approx(0.1)
    np.testing.assert_allclose(np.diff(karras ** (1 / 7)), np.diff(karras ** (1 / 7))[0])
    quad = spacing.timesteps("quadratic", ab, 20)
    np.testing.assert_array_equal(quad, schedules.quadratic_timesteps(1000, 20)[::-1])
    t, alpha, sigma = spacing.noise_levels("logsnr", ab, 6)  # uniform in lambda = log(alpha/sigma)
    step = (np.log(table[-1]) - np.log(table[0])) / 5
    np.testing.assert_allclose(np.diff(np.log(alpha / sigma)), step, rtol=1e-9)
    np.testing.assert_allclose(t[[0, -1]], [999, 0], atol=1e-9)
    with pytest.raises(ValueError, match="spacing"):
        spacing.timesteps("uniform", ab, 10)
    with pytest.raises(ValueError, match="Cannot take"):
        spacing.timesteps("trailing", ab, 1000)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_equals_diffusers(name):
    x0, xs = _run(CASES[name], return_trajectory=True)
    want = REF[f"{name}/trajectory"]
    assert xs.shape == want.shape and np.array_equal(x0, xs[-1])
    np.testing.assert_allclose(xs, want, **TOL)


@pytest.mark.parametrize(
    "name", ["dpmpp3m_karras_10", "dpmpp2s_linspace_15", "unipc3_bh1_linspace_10"]
)
def test_the_sample_alone_and_a_given_x_T(name):
    want = REF[f"{name}/trajectory"][-1]
    np.testing.assert_allclose(_run(CASES[name]), want, **TOL)
    np.testing.assert_allclose(_run(CASES[name], x_T=REF["x_T"]), want, **TOL)


SOLVERS = {
    "2M": dict(order=2),
    "3M": dict(order=3),
    "2S": dict(order=2, method="singlestep"),
    "UniPC-2 bh1": dict(order=2, variant="bh1"),
    "UniPC-3 bh2": dict(order=3, variant="bh2"),
}


LOG_SIGMAS = np.log(spacing.schedule_sigmas(SCHEDS["linear"].alphas_cumprod))


def _gauss_net(params, x_t, t, y):
    """The exact eps of data N(m_y, 0.5^2), m = -1, +1, 0 for y = 0, 1 and the null label 2: CFG
    with weight w then samples N(m_y (1 + w), 0.5^2) exactly (the scores are linear in x)."""
    log_sigma = jnp.interp(t, jnp.arange(1000.0), LOG_SIGMAS)
    alpha = (1.0 / jnp.sqrt(1.0 + jnp.exp(2 * log_sigma)))[:, None]
    sigma = jnp.sqrt(1.0 - alpha**2)
    mean = jnp.where(y == 2, 0.0, 2.0 * y - 1.0)[:, None]
    return sigma * (x_t - alpha * mean) / (alpha**2 * 0.25 + sigma**2)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_guidance_moves_samples_the_expected_way(solver):
    """CFG with w = 2 moves every coordinate by about 2 m_y (the ODE map of a Gaussian is a shift
    plus a contraction); classifier guidance with grad log p = +1 raises every coordinate."""
    kw = dict(SOLVERS[solver])
    sampler = solvers.sample_unipc if "variant" in kw else solvers.sample_dpmpp
    y, shape, key = jnp.array([0, 1, 0, 1]), (4, 3), jax.random.key(3)

    def run(guidance):
        kw.update(steps=6, y=y, denoiser=UNCLIPPED, guidance=guidance)
        return np.asarray(sampler(_gauss_net, None, SCHEDS["linear"], shape, key, **kw))

    plain = run(Guidance())
    cfg = run(Guidance(cfg_scale=2.0, num_classes=2))
    direction = (2.0 * np.asarray(y) - 1.0)[:, None]
    assert np.all(np.isfinite(cfg)) and np.all(np.abs(cfg - plain - 2 * direction) < 0.02)
    pushed = run(Guidance(cond_fn=lambda x, t, y: jnp.ones_like(x), classifier_scale=0.5))
    assert np.all(np.isfinite(pushed)) and np.all(pushed - plain > 0.1)


def test_bad_settings_are_refused():
    sched, key, apply_fn = SCHEDS["linear"], jax.random.key(0), APPLY["linear"]
    bad = [
        (solvers.sample_dpmpp, dict(steps=10, order=4), "order"),
        (solvers.sample_dpmpp, dict(steps=10, order=3, method="singlestep"), "singlestep"),
        (solvers.sample_unipc, dict(steps=10, variant="bh3"), "variant"),
        (solvers.sample_unipc, dict(steps=10, spacing="uniform"), "spacing"),
        (solvers.sample_dpmpp, dict(steps=0), "steps"),
        (solvers.sample_dpmpp, dict(steps=10, thresholding=(0.9, 0.5)), "thresholding"),
    ]
    for sampler, kw, match in bad:
        with pytest.raises(ValueError, match=match):
            sampler(apply_fn, None, sched, (1, 2), key, **kw)
    respaced = schedules.make_schedule("linear", 1000, respacing="50")
    with pytest.raises(ValueError, match="respaced"):
        solvers.sample_dpmpp(apply_fn, None, respaced, (1, 2), key, steps=5)
