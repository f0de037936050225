"""Euler and Heun in sigma (`sampling.karras`) against diffusers' Euler/Heun discrete schedulers.

tests/data/karras_reference.npz was written once by experiments/checks/karras_reference.py (its
docstring says how each case was driven, the diffusers version is in the file): the sigmas, the
model timesteps and x at every sigma for Euler and Heun, three timestep spacings, Karras sigmas,
10 and 25 steps, and the churn variants, on that script's `mixture_eps` (the exact eps of a
Gaussian-mixture data distribution), which is loaded from the script here (numpy only) and run
inside our compiled chains through `jax.pure_callback`.
"""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import schedules
from diffusion_jax.sampling import Denoiser, Guidance, karras

ROOT = Path(__file__).resolve().parents[1]
REF = np.load(ROOT / "tests" / "data" / "karras_reference.npz")
CASES = json.loads(str(REF["cases"]))
CHURN = CASES.pop("churn_settings")
_spec = importlib.util.spec_from_file_location(
    "karras_reference", ROOT / "experiments" / "checks" / "karras_reference.py"
)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
SCHED = schedules.make_schedule("linear", reference.NUM_TRAIN_TIMESTEPS)
UNCLIPPED = Denoiser(clip_denoised=False)  # diffusers' Euler and Heun do not clip x_0_hat
# Float32 rounding: sigma_0 = 157 makes |x| ~ 400 at the start and ~1 at the end, so errors are
# measured against the largest |x| of the same state (worst seen: 1.1e-6, about 9 ulp).
RTOL = 2e-6


def mixture_apply(params, x_t, t, y=None):
    out = jax.ShapeDtypeStruct(x_t.shape, jnp.float32)
    return jax.pure_callback(reference.mixture_eps, out, x_t, t)


def _run(case, **kw):
    sampler = karras.sample_heun if case["solver"] == "heun" else karras.sample_euler
    if case["churn"]:
        kw.update(CHURN)
    if case["churn"] == "diffusers":
        kw["diffusers_churn"] = True
    return sampler(
        mixture_apply,
        None,
        SCHED,
        reference.SHAPE,
        jax.random.key(reference.SEED),
        steps=case["steps"],
        spacing=case["spacing"],
        use_karras_sigmas=case["karras"],
        denoiser=UNCLIPPED,
        **kw,
    )


def test_the_reference_used_our_draws():
    key = jax.random.key(reference.SEED)
    draw = lambda i: jax.random.normal(jax.random.fold_in(key, i), reference.SHAPE)  # noqa: E731
    np.testing.assert_array_equal(REF["x_T"], draw(SCHED.num_timesteps))
    np.testing.assert_array_equal(REF["noise"], np.stack([draw(i) for i in range(25)]))
    assert str(REF["versions"]).startswith("diffusers ")


@pytest.mark.parametrize("name", sorted(CASES))
def test_sigmas_and_timesteps_equal_diffusers(name):
    case = CASES[name]
    ab = np.asarray(SCHED.alphas_cumprod, np.float64)
    sigmas, t_model = karras.sigma_schedule(ab, case["steps"], case["spacing"], case["karras"])
    # diffusers' alpha_bar is a float32 torch.cumprod, ours float64 rounded once: <= 5e-6 apart
    np.testing.assert_allclose(sigmas, REF[f"{name}/sigmas"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(t_model, REF[f"{name}/timesteps"], rtol=0, atol=5e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_equals_diffusers(name):
    x0, xs = _run(CASES[name], return_trajectory=True)
    want = REF[f"{name}/trajectory"]
    assert xs.shape == want.shape and np.array_equal(x0, xs[-1])
    scale = np.abs(want).max(axis=(1, 2), keepdims=True)  # per state
    np.testing.assert_array_less(np.abs(np.asarray(xs) - want) / scale, RTOL)


@pytest.mark.parametrize("name", ["euler_churn_karras_10", "heun_churn_karras_10"])
def test_the_sample_alone_and_a_given_x_T(name):
    _, xs = _run(CASES[name], return_trajectory=True)
    tol = dict(rtol=1e-6, atol=1e-6)  # another compilation: XLA may round differently
    np.testing.assert_allclose(_run(CASES[name]), xs[-1], **tol)
    np.testing.assert_allclose(_run(CASES[name], x_T=REF["x_T"]), xs[-1], **tol)


def test_guidance_runs_with_both_samplers():
    """Classifier-free guidance equals the sampler on the mixed network (1 + w) eps_c - w eps_u;
    classifier guidance with a zero gradient changes nothing, a non-zero one moves the samples."""

    def net(params, x_t, t, y):
        return 0.3 * x_t + 0.1 * (y[:, None].astype(jnp.float32) - 1.0) + 1e-4 * t[:, None]

    def mixed(params, x_t, t, y):
        return 3.0 * net(params, x_t, t, y) - 2.0 * net(params, x_t, t, jnp.full_like(y, 3))

    shape, key, y = (3, 2), jax.random.key(1), jnp.array([0, 1, 2])
    kw = dict(steps=4, y=y, denoiser=UNCLIPPED, s_churn=1.0)
    for sampler in (karras.sample_euler, karras.sample_heun):
        plain = sampler(net, None, SCHED, shape, key, **kw)
        cfg = sampler(net, None, SCHED, shape, key, guidance=Guidance(2.0, num_classes=3), **kw)
        np.testing.assert_allclose(cfg, sampler(mixed, None, SCHED, shape, key, **kw), rtol=1e-5)
        zero = Guidance(cond_fn=lambda x, t, y: jnp.zeros_like(x))
        np.testing.assert_array_equal(sampler(net, None, SCHED, shape, key, guidance=zero, **kw),
                                      plain)  # fmt: skip
        push = Guidance(cond_fn=lambda x, t, y: jnp.ones_like(x), classifier_scale=1.0)
        pushed = sampler(net, None, SCHED, shape, key, guidance=push, **kw)
        assert np.all(np.isfinite(pushed)) and np.all(np.abs(pushed - plain) > 1e-3)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="spacing"):
        _run({**CASES["euler_linspace_10"], "spacing": "uniform"})
    with pytest.raises(ValueError, match="steps"):
        _run({**CASES["euler_linspace_10"], "steps": 0})
    respaced = schedules.make_schedule("linear", 1000, respacing="50")
    with pytest.raises(ValueError, match="respaced"):
        karras.sample_euler(mixture_apply, None, respaced, (1, 2), jax.random.key(0), steps=5)
