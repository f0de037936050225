"""One-off check: reference trajectories of diffusers' DPM-Solver++ and UniPC schedulers.

Not run in CI. From the repository root (needs torch and diffusers besides our dependencies):

    .venv/bin/python experiments/checks/solver_reference.py

writes tests/data/solver_reference.npz, which tests/test_solvers_dpm.py compares
`diffusion_jax.sampling.solvers` and `diffusion_jax.core.spacing` against. The network is
`mixture_eps`: the exact eps-prediction E[eps | x_t] of data whose coordinates are i.i.d. draws of a
two-component Gaussian mixture, at fractional timesteps by interpolating log sigma over t. The test
imports this module for it (numpy only at import time), so both sides call the same code.

The schedulers: DPMSolverMultistepScheduler (algorithm_type="dpmsolver++", solver_type="midpoint"),
DPMSolverSinglestepScheduler (solver_order=2) and UniPCMultistepScheduler (predict_x0=True,
solver_type bh1/bh2), all with final_sigmas_type="zero" and epsilon prediction. Each runs the
process of our `schedules.make_schedule(name, 1000)`: its float32 alphas_cumprod replaces the
scheduler's own (diffusers' float32 cumprod of the betas differs by ~1e-6). Driven as diffusers'
pipelines drive them: x <- step(eps(x, t_i), t_i, x).prev_sample from x_T = normal(fold_in(
key(SEED), 1000)) (`samplers._x_init`), recording every prev_sample. Two departures, both stored:
  * "karras" and "logsnr" (use_karras_sigmas, use_lu_lambdas): diffusers rounds the timestep that
    the network sees; the network here gets diffusers' own `_sigma_to_t` of the step's sigma
    unrounded (what our solvers feed it), while `timesteps` keeps diffusers' rounded ones;
  * UniPC bh1: diffusers' last step into sigma 0 returns NaN (B(h) = h = -inf times a zero
    residual); the last state stored is that step's limit, its x_0 prediction (which is also what
    bh2's last step returns, checked here).
The singlestep scheduler has no `timestep_spacing`: its "trailing" cases are given the multistep
scheduler's trailing timesteps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "tests" / "data" / "solver_reference.npz"
NUM_TRAIN_TIMESTEPS, SEED, SHAPE = 1000, 0, (4, 2, 4)  # 3-D: diffusers' thresholding needs it
MIX_WEIGHT = np.array([0.4, 0.6])
MIX_MEAN = np.array([-1.1, 0.9])  # beyond +-1 in places, so that dynamic thresholding acts
MIX_STD = np.array([0.2, 0.35])
THRESHOLDING = (0.9, 1.5)  # dynamic_thresholding_ratio, sample_max_value


def _case(solver, order, spacing, steps, **kw):
    base = dict(method="multistep", variant=None, steps_offset=0, lower_order_final=True)
    base.update(thresholding=None, schedule="linear")
    return dict(base, solver=solver, order=order, spacing=spacing, steps=steps, **kw)


def _cases() -> dict:
    cases = {}
    for order in (2, 3):
        for spacing in ("linspace", "trailing"):
            for steps in (10, 20):
                cases[f"dpmpp{order}m_{spacing}_{steps}"] = _case("dpmpp", order, spacing, steps)
                for variant in ("bh1", "bh2"):
                    name = f"unipc{order}_{variant}_{spacing}_{steps}"
                    cases[name] = _case("unipc", order, spacing, steps, variant=variant)
    for spacing in ("karras", "logsnr"):
        for steps in (10, 20):
            cases[f"dpmpp2m_{spacing}_{steps}"] = _case("dpmpp", 2, spacing, steps)
    cases["dpmpp3m_karras_10"] = _case("dpmpp", 3, "karras", 10)
    cases["dpmpp2m_leading_10_offset1"] = _case("dpmpp", 2, "leading", 10, steps_offset=1)
    cases["dpmpp3m_linspace_10_no_lof"] = _case("dpmpp", 3, "linspace", 10, lower_order_final=False)
    cases["dpmpp2m_linspace_10_thresh"] = _case(
        "dpmpp", 2, "linspace", 10, thresholding=THRESHOLDING
    )
    cases["unipc3_bh2_karras_10"] = _case("unipc", 3, "karras", 10, variant="bh2")
    for spacing, steps in (("linspace", 10), ("linspace", 15), ("trailing", 10), ("karras", 10)):
        cases[f"dpmpp2s_{spacing}_{steps}"] = _case("dpmpp", 2, spacing, steps, method="singlestep")
    cases["dpmpp2m_linspace_10_cosine"] = _case("dpmpp", 2, "linspace", 10, schedule="cosine")
    cases["unipc3_bh2_trailing_10_cosine"] = _case(
        "unipc", 3, "trailing", 10, variant="bh2", schedule="cosine"
    )
    return cases


CASES = _cases()


def _log_sigmas(alphas_cumprod) -> np.ndarray:
    ab = np.asarray(alphas_cumprod, np.float64)
    return 0.5 * np.log((1.0 - ab) / ab)


def mixture_eps(x_t, t, alphas_cumprod) -> np.ndarray:
    """E[eps | x_t] for x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, x_0 per coordinate a mixture of
    N(MIX_MEAN[k], MIX_STD[k]^2) with weights MIX_WEIGHT; t [] or [B] may be fractional (log sigma
    interpolated over t, sigma^2 = (1 - ab) / ab). float64 inside, float32 out."""
    x = np.asarray(x_t, np.float64)[..., None]  # [B, ..., 1]: the mixture on the last axis
    t = np.broadcast_to(np.asarray(t, np.float64), x.shape[:1])
    table = _log_sigmas(alphas_cumprod)
    sigma_ve = np.exp(np.interp(t, np.arange(table.size), table))
    sigma_ve = sigma_ve.reshape(sigma_ve.shape + (1,) * (x.ndim - 1))
    alpha = 1.0 / np.sqrt(1.0 + sigma_ve**2)
    sigma = sigma_ve * alpha
    var = alpha**2 * MIX_STD**2 + sigma**2  # of x_t given the component
    log_w = np.log(MIX_WEIGHT) - 0.5 * np.log(var) - 0.5 * (x - alpha * MIX_MEAN) ** 2 / var
    resp = np.exp(log_w - log_w.max(-1, keepdims=True))
    resp /= resp.sum(-1, keepdims=True)
    # E[eps | x_t, k] = sigma (x_t - alpha mu_k) / var_k
    eps = np.sum(resp * sigma * (x - alpha * MIX_MEAN) / var, axis=-1)
    return eps.astype(np.float32)


def _scheduler(case, ab32, torch):
    import diffusers

    kw = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, solver_order=case["order"])
    kw.update(final_sigmas_type="zero", lower_order_final=case["lower_order_final"])
    kw.update(beta_schedule="squaredcos_cap_v2" if case["schedule"] == "cosine" else "linear")
    kw.update(use_karras_sigmas=case["spacing"] == "karras")
    if case["thresholding"]:
        ratio, max_value = case["thresholding"]
        kw.update(thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=max_value)
    if case["solver"] == "unipc":
        cls, kw = diffusers.UniPCMultistepScheduler, dict(kw, solver_type=case["variant"])
    elif case["method"] == "singlestep":
        cls, kw = diffusers.DPMSolverSinglestepScheduler, dict(kw, solver_type="midpoint")
    else:
        cls = diffusers.DPMSolverMultistepScheduler
        kw.update(solver_type="midpoint", use_lu_lambdas=case["spacing"] == "logsnr")
    if cls is not diffusers.DPMSolverSinglestepScheduler:
        named = case["spacing"] in ("linspace", "leading", "trailing")
        kw.update(timestep_spacing=case["spacing"] if named else "linspace")
        kw.update(steps_offset=case["steps_offset"])
    if cls is not diffusers.UniPCMultistepScheduler:
        kw.update(algorithm_type="dpmsolver++")
    sched = cls(**kw)
    ac = torch.from_numpy(ab32)  # our process, the tables derived from it as __init__ does
    sched.alphas_cumprod, sched.alpha_t, sched.sigma_t = ac, ac.sqrt(), (1.0 - ac).sqrt()
    sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
    sched.sigmas = ((1.0 - ac) / ac) ** 0.5
    return sched


def _set_timesteps(sched, case, ab32, torch):
    if case["method"] == "singlestep" and case["spacing"] == "trailing":
        multi = _scheduler(dict(case, method="multistep"), ab32, torch)
        multi.set_timesteps(case["steps"])
        sched.set_timesteps(timesteps=multi.timesteps.tolist())
    else:
        sched.set_timesteps(case["steps"])
    log_table = np.log((((1.0 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5).numpy())
    sigmas = sched.sigmas.numpy()
    if case["spacing"] in ("karras", "logsnr"):
        t_model = np.array([sched._sigma_to_t(s, log_table) for s in sigmas[:-1]], np.float64)
    else:
        t_model = sched.timesteps.numpy().astype(np.float64)
    return sigmas, t_model


def _run(case, x_T, torch):
    from diffusion_jax.core import schedules

    ab32 = np.array(schedules.make_schedule(case["schedule"], NUM_TRAIN_TIMESTEPS).alphas_cumprod)
    sched = _scheduler(case, ab32, torch)
    sigmas, t_model = _set_timesteps(sched, case, ab32, torch)
    x, states = torch.from_numpy(x_T.copy()), []
    for i, t in enumerate(sched.timesteps):
        eps = torch.from_numpy(mixture_eps(x.numpy(), t_model[i], ab32))
        x = sched.step(eps, t, x).prev_sample
        states.append(x.numpy().copy())
    last_x0 = sched.model_outputs[-1].numpy()
    if case["variant"] == "bh1":
        assert np.isnan(states[-1]).all() and not np.isnan(states[-2]).any()
        states[-1] = last_x0
    else:
        assert np.isfinite(states[-1]).all()
        if case["solver"] == "unipc":
            np.testing.assert_allclose(states[-1], last_x0, rtol=1e-6, atol=1e-6)
    ts = sched.timesteps.numpy()
    return dict(timesteps=ts, sigmas=sigmas, t_model=t_model, trajectory=np.stack(states))


def main():
    import diffusers
    import jax
    import torch

    x_T = np.asarray(
        jax.random.normal(jax.random.fold_in(jax.random.key(SEED), NUM_TRAIN_TIMESTEPS), SHAPE)
    )
    arrays = {"x_T": x_T}
    for name, case in CASES.items():
        for key, value in _run(case, x_T, torch).items():
            arrays[f"{name}/{key}"] = value
    versions = f"diffusers {diffusers.__version__}, torch {torch.__version__}"
    np.savez_compressed(OUTPUT, cases=json.dumps(CASES), versions=versions, **arrays)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({OUTPUT.stat().st_size} bytes), {len(CASES)} cases")


if __name__ == "__main__":
    main()
