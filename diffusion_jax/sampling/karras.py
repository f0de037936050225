"""Euler and Heun in sigma (Karras et al. 2022, "EDM") on a network trained as a discrete DDPM.

    from diffusion_jax.sampling import karras
    sched = schedules.make_schedule("linear", 1000)                  # the training schedule
    x0 = karras.sample_euler(apply_fn, params, sched, (16, 32, 32, 3), key, steps=25)
    x0 = karras.sample_heun(apply_fn, params, sched, shape, key, steps=18, spacing="trailing",
                            use_karras_sigmas=True)
    # stochastic sampling (EDM's Algorithm 2): churn noise for sigma in [s_tmin, s_tmax]
    x0 = karras.sample_heun(..., s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)
    x0, xs = karras.sample_euler(..., return_trajectory=True)         # xs [steps + 1, *shape]

The chain runs on x = x_0 + sigma eps, sigma^2 = (1 - alpha_bar) / alpha_bar; the network gets
the DDPM x_t = x / sqrt(1 + sigma^2) at the (fractional) timestep of sigma, through the guided
`predict.make_predict_fn` (classifier-free and classifier guidance, `Denoiser`), and each step
follows dx/dsigma = eps_hat. The sigmas and model timesteps are those of diffusers'
EulerDiscreteScheduler / HeunDiscreteScheduler `set_timesteps` (`sigma_schedule`): `spacing` is
their `timestep_spacing` ("linspace", "leading", "trailing"), `use_karras_sigmas` their option of
the same name (rho = 7 between the spacing's end sigmas); the last step goes to sigma = 0.

x_T is our samplers' N(0, I) draw (fold_in(rng, T), or the given `x_T`), scaled as diffusers'
`init_noise_sigma`: by sigma_0 for "linspace" and "trailing" (diffusers' choice; x at sigma_0 has
std sqrt(1 + sigma_0^2) for unit-variance data), by sqrt(1 + sigma_0^2) for "leading". Step i's
churn noise is normal(fold_in(rng, i)). `sample_euler(..., diffusers_churn=True)` is diffusers'
churn, which is not Algorithm 2 (see there). The tables are computed on the host with numpy (the
schedule must be concrete) and traced into one compiled `lax.scan`: only `steps`, the solver,
churn on/off, `shape` and the static arguments compile anew. Diffusers does not clip x_0_hat:
`Denoiser(clip_denoised=False)` to equal it (tests/test_solvers_karras.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.core import spacing as spacings
from diffusion_jax.core.schedules import Schedule
from diffusion_jax.sampling.predict import make_predict_fn
from diffusion_jax.sampling.samplers import Denoiser, Guidance, _x_init

SPACINGS = ("linspace", "leading", "trailing")
_DENOISER, _GUIDANCE = Denoiser(), Guidance()


def scheduler_timesteps(alphas_cumprod: np.ndarray, steps: int, spacing: str) -> np.ndarray:
    """The descending float64 timesteps [steps] of diffusers' Euler/Heun `timestep_spacing`:
    "linspace" the fractional linspace(0, T - 1, steps) and "leading" arange(steps) (T // steps),
    which differ from `spacing.timesteps` (DPM-Solver's: rounded and without t = 0; stride
    T // (steps + 1)), "trailing" as there."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}.")
    num_timesteps = len(alphas_cumprod)
    if not 1 <= steps < num_timesteps:
        raise ValueError(f"steps must lie in [1, {num_timesteps - 1}], got {steps}.")
    if spacing == "linspace":
        return np.linspace(0.0, num_timesteps - 1, steps)[::-1]
    if spacing == "leading":
        return np.arange(steps)[::-1] * float(num_timesteps // steps)
    return spacings.timesteps("trailing", alphas_cumprod, steps)


def sigma_schedule(
    alphas_cumprod: np.ndarray, steps: int, spacing: str = "linspace", use_karras_sigmas=False
) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas [steps + 1], t_model [steps]) as diffusers' Euler/Heun `set_timesteps`: sigma(t)
    interpolated linearly in t over sqrt((1 - ab) / ab) at `scheduler_timesteps`; with
    `use_karras_sigmas`, Karras sigmas (rho 7) between sigma(t_last) and sigma(t_0) and t from
    `spacing.sigma_to_t`; then sigma = 0 appended."""
    t_model = scheduler_timesteps(alphas_cumprod, steps, spacing)
    table = spacings.schedule_sigmas(alphas_cumprod)
    sigmas = np.interp(t_model, np.arange(len(table)), table)
    if use_karras_sigmas:
        sigmas = spacings.karras_sigmas(sigmas[-1], sigmas[0], steps)
        t_model = spacings.sigma_to_t(sigmas, alphas_cumprod)
    return np.append(sigmas, 0.0), t_model


def _tables(schedule, steps, spacing, use_karras_sigmas, churn) -> dict[str, jax.Array]:
    """The per-step float32 tables of the chain: sigma [N + 1], t [N] (network timestep at
    sigma), sigma_hat = (1 + gamma) sigma and t_hat [N], the churn noise's scale [N], the scale
    of x_T []. gamma = min(s_churn / N, sqrt(2) - 1) for sigma in [s_tmin, s_tmax], else 0."""
    if not np.array_equal(np.asarray(schedule.timestep_map), np.arange(schedule.num_timesteps)):
        raise ValueError(
            "Euler/Heun choose their own steps: pass the training schedule, not a respaced one."
        )
    alphas_cumprod = np.asarray(schedule.alphas_cumprod, np.float64)
    sigma, t = sigma_schedule(alphas_cumprod, steps, spacing, use_karras_sigmas)
    s_churn, s_tmin, s_tmax, s_noise = churn
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"s_churn and s_noise must be >= 0, got {s_churn} and {s_noise}.")
    inside = (s_tmin <= sigma[:-1]) & (sigma[:-1] <= s_tmax)
    gamma = np.where(inside, min(s_churn / steps, 2**0.5 - 1), 0.0)
    sigma_hat = sigma[:-1] * (1.0 + gamma)
    t_hat = np.where(gamma > 0, spacings.sigma_to_t(sigma_hat, alphas_cumprod), t)
    init = sigma[0] if spacing in ("linspace", "trailing") else np.sqrt(1.0 + sigma[0] ** 2)
    tables = dict(
        sigma=sigma,
        t=t,
        sigma_hat=sigma_hat,
        t_hat=t_hat,
        noise_scale=s_noise * np.sqrt(sigma_hat**2 - sigma[:-1] ** 2),
        init_sigma=init,
    )
    return {k: jnp.asarray(v, jnp.float32) for k, v in tables.items()}


def _eps_fn(predict, batch):
    """eps_hat(x, sigma, t) for sigma-space x: the DDPM x_t = alpha x, alpha = 1/sqrt(1+sigma^2),
    noise scale sigma alpha, network timestep t (scalars broadcast over the batch)."""

    def eps(x, sigma, t):
        alpha = jax.lax.rsqrt(1.0 + sigma**2)
        t_b, alpha_b, sigma_b = (
            jnp.full((batch,), v, jnp.float32) for v in (t, alpha, sigma * alpha)
        )
        return predict(x * alpha, t_b, alpha_b, sigma_b)[1]

    return eps


def _steps(eps, tab, rng, shape, stochastic, diffusers_churn):
    """(euler, heun): (i, x_i) -> x_{i+1}. Both first add the churn noise (x_hat at sigma_hat);
    Euler: x_hat + (sigma_{i+1} - sigma_hat) eps_hat(x_hat); Heun: the trapezoidal correction
    with eps_hat at the Euler point and sigma_{i+1} (Alg. 2). `diffusers_churn`: eps_hat of the
    pre-churn x at sigma_i, t_i instead, as diffusers' Euler scheduler and pipelines do."""

    def churned(i, x):
        if not stochastic:
            return x
        return x + tab["noise_scale"][i] * jax.random.normal(jax.random.fold_in(rng, i), shape)

    def euler(i, x):
        x_hat = churned(i, x)
        if diffusers_churn:
            d = eps(x, tab["sigma"][i], tab["t"][i])
        else:
            d = eps(x_hat, tab["sigma_hat"][i], tab["t_hat"][i])
        return x_hat + (tab["sigma"][i + 1] - tab["sigma_hat"][i]) * d

    def heun(i, x):
        x_hat = churned(i, x)
        d = eps(x_hat, tab["sigma_hat"][i], tab["t_hat"][i])
        dt = tab["sigma"][i + 1] - tab["sigma_hat"][i]
        d_next = eps(x_hat + dt * d, tab["sigma"][i + 1], tab["t"][i + 1])
        return x_hat + dt * ((d + d_next) / 2.0)

    return euler, heun


_STATIC = (
    "apply_fn",
    "shape",
    "num_timesteps",
    "denoiser",
    "heun",
    "stochastic",
    "diffusers_churn",
)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "trajectory"))
def _chain(apply_fn, params, tab, shape, rng, y, x_T, guidance, *, num_timesteps, denoiser, heun,
           stochastic, diffusers_churn, trajectory):  # fmt: skip
    """x_0 (and, with `trajectory`, x at every sigma [N + 1, *shape]): N - 1 Heun steps then an
    Euler step into sigma = 0 when `heun`, else N Euler steps; one `lax.scan`."""
    predict = make_predict_fn(apply_fn, params, y=y, denoiser=denoiser, guidance=guidance)
    eps = _eps_fn(predict, shape[0])
    euler, heun_step = _steps(eps, tab, rng, shape, stochastic, diffusers_churn)
    step, num_steps = (heun_step if heun else euler), tab["t"].shape[0]

    def body(x, i):
        x = step(i, x)
        return x, (x if trajectory else None)

    x_init = tab["init_sigma"] * _x_init(rng, shape, num_timesteps, x_T)
    x, xs = jax.lax.scan(body, x_init, jnp.arange(num_steps - 1 if heun else num_steps))
    if heun:  # no correction on the step into sigma = 0
        x = euler(num_steps - 1, x)
        xs = jnp.concatenate([xs, x[None]]) if trajectory else None
    return (x, jnp.concatenate([x_init[None], xs])) if trajectory else x


def _sample(apply_fn, params, schedule, shape, rng, *, heun, steps, spacing, use_karras_sigmas,
            churn, diffusers_churn, y, denoiser, guidance, x_T, return_trajectory):  # fmt: skip
    tab = _tables(schedule, steps, spacing, use_karras_sigmas, churn)
    return _chain(apply_fn, params, tab, tuple(shape), rng, y, x_T, guidance,
                  num_timesteps=schedule.num_timesteps, denoiser=denoiser, heun=heun,
                  stochastic=churn[0] > 0, diffusers_churn=diffusers_churn,
                  trajectory=return_trajectory)  # fmt: skip


def sample_euler(
    apply_fn,
    params,
    schedule: Schedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    *,
    steps: int,
    spacing: str = "linspace",
    use_karras_sigmas: bool = False,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    diffusers_churn: bool = False,
    y: jax.Array | None = None,
    denoiser: Denoiser = _DENOISER,
    guidance: Guidance = _GUIDANCE,
    x_T: jax.Array | None = None,
    return_trajectory: bool = False,
):
    """Euler in sigma, `steps` network calls: x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat_i)
    eps_hat(x_hat, sigma_hat_i), x_hat = x_i + s_noise sqrt(sigma_hat_i^2 - sigma_i^2) z_i
    (Karras et al. Alg. 2 with its Euler step; Alg. 1's Euler when s_churn = 0). Diffusers'
    EulerDiscreteScheduler.step(s_churn, s_tmin, s_tmax, s_noise) instead takes eps_hat at the
    pre-churn x_i, sigma_i: `diffusers_churn=True`. Returns x_0 [shape] (and x at every sigma
    [steps + 1, *shape] with `return_trajectory`)."""
    return _sample(apply_fn, params, schedule, shape, rng, heun=False, steps=steps,
                   spacing=spacing, use_karras_sigmas=use_karras_sigmas,
                   churn=(s_churn, s_tmin, s_tmax, s_noise), diffusers_churn=diffusers_churn,
                   y=y, denoiser=denoiser, guidance=guidance, x_T=x_T,
                   return_trajectory=return_trajectory)  # fmt: skip


def sample_heun(
    apply_fn,
    params,
    schedule: Schedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    *,
    steps: int,
    spacing: str = "linspace",
    use_karras_sigmas: bool = False,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    y: jax.Array | None = None,
    denoiser: Denoiser = _DENOISER,
    guidance: Guidance = _GUIDANCE,
    x_T: jax.Array | None = None,
    return_trajectory: bool = False,
):
    """EDM's 2nd-order sampler (Karras et al. Alg. 1; Alg. 2 with churn), 2 steps - 1 network
    calls: `sample_euler`'s step to x'_{i+1}, then x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat_i)
    (d_i + d'_i) / 2, d'_i = eps_hat(x'_{i+1}, sigma_{i+1}); none on the last step (sigma = 0).
    Equals diffusers' HeunDiscreteScheduler for s_churn = 0 (it has no churn). Returns x_0
    [shape] (and x at every sigma [steps + 1, *shape] with `return_trajectory`)."""
    return _sample(apply_fn, params, schedule, shape, rng, heun=True, steps=steps,
                   spacing=spacing, use_karras_sigmas=use_karras_sigmas,
                   churn=(s_churn, s_tmin, s_tmax, s_noise), diffusers_churn=False,
                   y=y, denoiser=denoiser, guidance=guidance, x_T=x_T,
                   return_trajectory=return_trajectory)  # fmt: skip
