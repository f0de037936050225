"""One-off check: reference trajectories of diffusers' Euler and Heun discrete schedulers.

Not run in CI. From the repository root (needs torch and diffusers besides our dependencies):

    .venv/bin/python experiments/checks/karras_reference.py

writes tests/data/karras_reference.npz, which tests/test_solvers_karras.py compares
`diffusion_jax.sampling.karras` against. The network is `mixture_eps`: the exact eps-prediction
E[eps | x_t] of data whose coordinates are i.i.d. draws of a two-component Gaussian mixture, under
DDPM's linear schedule (T=1000), at fractional timesteps by interpolating log sigma over t. The
test imports this module for it (numpy only at import time), so both sides call the same code.

Every case starts from the same x_T = normal(fold_in(key(SEED), 1000)) (`samplers._x_init`), times
diffusers' `init_noise_sigma`, and records x at every sigma of the schedule ([steps + 1, *SHAPE]).
Churn noise: our samplers draw step i's noise as normal(fold_in(key(SEED), i)); here those arrays
are computed with JAX and handed to diffusers by replacing the `randn_tensor` its Euler scheduler
module calls, so both sides add the same noise. The stochastic cases:
  * "diffusers" churn: EulerDiscreteScheduler.step with s_churn, driven as its pipelines drive it
    (the network sees the pre-churn x at sigma_i; `step` adds the noise and uses eps at sigma_hat);
  * Euler, Karras et al. (2022) Algorithm 2: the same `step`, but the driver evaluates the network
    at the churned x_hat and sigma_hat (t = diffusers' `_sigma_to_t(sigma_hat)`), as the paper does;
  * Heun, Algorithm 2: diffusers' Heun has no churn (gamma = 0 hard-coded), so the reference is the
    algorithm written out below in float32 numpy on diffusers' sigmas and timesteps; with s_churn=0
    it is checked against HeunDiscreteScheduler here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "tests" / "data" / "karras_reference.npz"
NUM_TRAIN_TIMESTEPS, BETA_START, BETA_END = 1000, 1e-4, 0.02
SEED, SHAPE = 0, (4, 8)
MIX_WEIGHT = np.array([0.3, 0.7])
MIX_MEAN = np.array([-0.6, 0.5])
MIX_STD = np.array([0.15, 0.3])
CHURN = dict(s_churn=4.0, s_tmin=0.05, s_tmax=10.0, s_noise=1.003)


def _case(solver, spacing, steps, karras=False, churn=None):
    return dict(solver=solver, spacing=spacing, steps=steps, karras=karras, churn=churn)


CASES = {
    **{
        f"{solver}_{spacing}_{steps}": _case(solver, spacing, steps)
        for solver in ("euler", "heun")
        for spacing in ("linspace", "leading", "trailing")
        for steps in (10, 25)
    },
    **{
        f"{solver}_karras_{spacing}_{steps}": _case(solver, spacing, steps, karras=True)
        for solver in ("euler", "heun")
        for spacing, steps in (("linspace", 10), ("linspace", 25), ("leading", 10))
    },
    **{
        f"{solver}_churn_{churn}_{steps}": _case(solver, "linspace", steps, True, churn)
        for solver, churn in (("euler", "diffusers"), ("euler", "karras"), ("heun", "karras"))
        for steps in (10, 25)
    },
}


def _log_sigmas() -> np.ndarray:
    betas = np.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    return 0.5 * np.log((1.0 - alphas_cumprod) / alphas_cumprod)


def mixture_eps(x_t, t) -> np.ndarray:
    """E[eps | x_t] for x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, x_0 per coordinate a mixture of
    N(MIX_MEAN[k], MIX_STD[k]^2) with weights MIX_WEIGHT; t [] or [B] may be fractional (log sigma
    interpolated over t, sigma^2 = (1 - ab) / ab). float64 inside, float32 out."""
    x = np.asarray(x_t, np.float64)[..., None]  # [B, ..., 1]: the mixture on the last axis
    t = np.broadcast_to(np.asarray(t, np.float64), x.shape[:1])
    sigma = np.exp(np.interp(t, np.arange(NUM_TRAIN_TIMESTEPS), _log_sigmas()))
    a = (1.0 / np.sqrt(1.0 + sigma**2)).reshape((-1,) + (1,) * (x.ndim - 1))
    s = a * sigma.reshape(a.shape)
    var = a**2 * MIX_STD**2 + s**2  # of x_t given the component
    logp = np.log(MIX_WEIGHT) - 0.5 * np.log(var) - 0.5 * (x - a * MIX_MEAN) ** 2 / var
    resp = np.exp(logp - logp.max(-1, keepdims=True))
    resp /= resp.sum(-1, keepdims=True)
    x0_k = MIX_MEAN + a * MIX_STD**2 / var * (x - a * MIX_MEAN)
    x0 = (resp * x0_k).sum(-1, keepdims=True)
    return ((x - a * x0) / s)[..., 0].astype(np.float32)


def _our_draws(steps: int):
    """x_T and the churn noise of steps 0..steps-1 as our samplers draw them."""
    import jax

    key = jax.random.key(SEED)
    draw = lambda i: np.asarray(jax.random.normal(jax.random.fold_in(key, i), SHAPE))  # noqa: E731
    return draw(NUM_TRAIN_TIMESTEPS), np.stack([draw(i) for i in range(steps)])


def _scheduler(cls, case):
    sched = cls(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="linear",
        timestep_spacing=case["spacing"],
        use_karras_sigmas=case["karras"],
    )
    sched.set_timesteps(case["steps"])
    return sched


def _net(x_in, t):
    """The network on the scaled input x / sqrt(sigma^2 + 1) at (fractional) timestep t."""
    import torch

    return torch.from_numpy(mixture_eps(x_in.numpy(), float(t)))


def _log_sigmas_of(sched) -> np.ndarray:
    return np.log((((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5).numpy())


def _run_euler(case, x_T, noise):
    import torch
    from diffusers import EulerDiscreteScheduler
    from diffusers.schedulers import scheduling_euler_discrete as module

    sched = _scheduler(EulerDiscreteScheduler, case)
    module.randn_tensor = lambda *a, **k: torch.from_numpy(noise[sched.step_index])
    gamma = min(CHURN["s_churn"] / case["steps"], 2**0.5 - 1)
    x = torch.tensor(x_T) * sched.init_noise_sigma
    trajectory = [x]
    for i, t in enumerate(sched.timesteps):
        x_in, t_model, sigma = sched.scale_model_input(x, t), t, sched.sigmas[i]
        if case["churn"] == "karras" and CHURN["s_tmin"] <= sigma <= CHURN["s_tmax"]:
            # Algorithm 2: the network sees x_hat at sigma_hat (the same sums `step` does next)
            sigma_hat = sigma * (gamma + 1)
            z = torch.from_numpy(noise[i]) * CHURN["s_noise"]
            x_in = (x + z * (sigma_hat**2 - sigma**2) ** 0.5) / (sigma_hat**2 + 1) ** 0.5
            t_model = sched._sigma_to_t(sigma_hat.numpy(), _log_sigmas_of(sched))
        churn = CHURN if case["churn"] else {}
        x = sched.step(_net(x_in, t_model), t, x, **churn).prev_sample
        trajectory.append(x)
    return sched.sigmas.numpy(), sched.timesteps.numpy(), torch.stack(trajectory).numpy()


def _run_heun(case, x_T):
    import torch
    from diffusers import HeunDiscreteScheduler

    sched = _scheduler(HeunDiscreteScheduler, case)
    x = torch.tensor(x_T) * sched.init_noise_sigma
    trajectory = [x]
    for t in sched.timesteps:
        x = sched.step(_net(sched.scale_model_input(x, t), t), t, x).prev_sample
        if sched.state_in_first_order:  # a whole Heun step done (not its Euler predictor)
            trajectory.append(x)
    trajectory.append(x)  # the last step, an Euler step into sigma = 0
    # sigmas [s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0], timesteps [t0, t1, t1, ..., t_{N-1}, t_{N-1}]
    sigmas = np.append(sched.sigmas.numpy()[0::2], np.float32(0.0))
    return sched, sigmas, sched.timesteps.numpy()[0::2], torch.stack(trajectory).numpy()


def _heun_algorithm2(sched, sigmas, timesteps, x_T, noise, churn):
    """Karras et al. (2022) Algorithm 2 in float32 numpy (Heun, churn, no correction into 0)."""
    f32, steps = np.float32, len(timesteps)
    eps = lambda x, s, t: mixture_eps(x / np.sqrt(s * s + f32(1)), t)  # noqa: E731
    x = x_T * f32(sched.init_noise_sigma)
    trajectory = [x]
    for i in range(steps):
        sigma, sigma_next, t_hat = sigmas[i], sigmas[i + 1], timesteps[i]
        sigma_hat = sigma
        if churn and churn["s_tmin"] <= sigma <= churn["s_tmax"]:
            sigma_hat = sigma * f32(min(churn["s_churn"] / steps, 2**0.5 - 1) + 1)
            x = x + noise[i] * f32(churn["s_noise"]) * np.sqrt(sigma_hat**2 - sigma**2)
            t_hat = f32(sched._sigma_to_t(np.float64(sigma_hat), _log_sigmas_of(sched)))
        d = eps(x, sigma_hat, t_hat)
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:
            d_next = eps(x_next, sigma_next, timesteps[i + 1])
            x_next = x + (sigma_next - sigma_hat) * ((d + d_next) / f32(2))
        x = x_next
        trajectory.append(x)
    return np.stack(trajectory)


def main() -> None:
    import diffusers
    import torch

    x_T, noise = _our_draws(max(case["steps"] for case in CASES.values()))
    out = {
        "x_T": x_T,
        "noise": noise,
        "cases": np.array(json.dumps({**CASES, "churn_settings": CHURN})),
        "versions": np.array(f"diffusers {diffusers.__version__}, torch {torch.__version__}"),
    }
    for name, case in CASES.items():
        if case["solver"] == "euler":
            sigmas, timesteps, trajectory = _run_euler(case, x_T, noise)
        else:
            sched, sigmas, timesteps, trajectory = _run_heun(case, x_T)
            written_out = _heun_algorithm2(sched, sigmas, timesteps, x_T, noise, None)
            np.testing.assert_allclose(written_out, trajectory, rtol=1e-5, atol=1e-5)
            if case["churn"]:
                trajectory = _heun_algorithm2(sched, sigmas, timesteps, x_T, noise, CHURN)
        out.update({f"{name}/sigmas": sigmas, f"{name}/timesteps": timesteps})
        out[f"{name}/trajectory"] = trajectory.astype(np.float32)
    np.savez_compressed(OUTPUT, **out)
    print(f"{OUTPUT}: {len(CASES)} cases, {OUTPUT.stat().st_size} bytes, {out['versions']}")


if __name__ == "__main__":
    main()
