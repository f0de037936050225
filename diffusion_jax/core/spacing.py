"""Timestep spacings of the fast solvers: which noise levels N steps visit in a DDPM process.

    from diffusion_jax.core import spacing
    ab = np.asarray(schedule.alphas_cumprod, np.float64)            # [T]
    t = spacing.timesteps("trailing", ab, 20)                        # descending model timesteps
    t, alpha, sigma = spacing.noise_levels("karras", ab, 20)        # x_t = alpha x_0 + sigma eps
    s = spacing.karras_sigmas(0.03, 14.6, 20)                        # Karras et al. sigmas (VE)
    spacing.sigma_to_t(s, ab)                                        # their fractional timesteps

Two noise scales appear: the VE sigma = sqrt((1 - alpha_bar) / alpha_bar) of Karras et al. and of
diffusers' `sigmas` (x / alpha = x_0 + sigma eps), and the VP pair alpha = 1 / sqrt(1 + sigma^2),
sigma_vp = sigma alpha that `noise_levels` returns. The spacings follow diffusers'
`DPMSolverMultistepScheduler.set_timesteps` (and UniPC's): "linspace", "leading", "trailing" (its
`timestep_spacing`; `steps_offset`, default 0, shifts "leading" only, as there; "leading" strides
by T // (n + 1), where diffusers' Euler and DDIM schedulers stride by T // n), "quadratic" (DDIM's
quad skip, `schedules.quadratic_timesteps`), "logsnr" (its `use_lu_lambdas`: uniform in
lambda = log(alpha / sigma_vp)) and "karras" (its `use_karras_sigmas`, rho = 7). For the last two
diffusers rounds the timestep fed to the network to an integer while stepping with the exact sigma;
we keep the fractional timestep, which matches that sigma.
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.core.schedules import quadratic_timesteps

SPACINGS = ("linspace", "leading", "trailing", "quadratic", "logsnr", "karras")


def schedule_sigmas(alphas_cumprod) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) [T], float64: step t's VE noise level."""
    ab = np.asarray(alphas_cumprod, np.float64)
    return np.sqrt((1.0 - ab) / ab)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5, descending [n]: sigma_i = (sigma_max^(1/rho)
    + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..n-1."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigmas, alphas_cumprod) -> np.ndarray:
    """Fractional timesteps of VE `sigmas`: log sigma interpolated linearly between the integer
    steps of the schedule (diffusers' `_sigma_to_t`), clipped to [0, T - 1]."""
    log_table = np.log(schedule_sigmas(alphas_cumprod))  # increasing in t
    log_sigma = np.log(np.maximum(np.asarray(sigmas, np.float64), 1e-10))
    # the last table step at or below log sigma, so that t lies in [low, low + 1]
    low = np.clip(np.searchsorted(log_table, log_sigma, side="right") - 1, 0, log_table.size - 2)
    w = np.clip((log_table[low] - log_sigma) / (log_table[low] - log_table[low + 1]), 0.0, 1.0)
    return low + w


def _integer_timesteps(name: str, T: int, n: int, steps_offset: int) -> np.ndarray:
    if name == "linspace":
        return np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    if name == "leading":
        return (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1] + steps_offset
    if name == "trailing":
        return np.arange(T, 0, -T / n).round() - 1
    return np.asarray(quadratic_timesteps(T, n), np.float64)[::-1]


def noise_levels(
    name: str, alphas_cumprod, num_steps: int, *, steps_offset: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, alpha, sigma) of the `num_steps` levels of spacing `name` (one of `SPACINGS`), each a
    float64 [num_steps], noisiest first: t the model timestep (fractional for "logsnr" and
    "karras"), x_t = alpha x_0 + sigma eps. The sampler's final level (alpha 1, sigma 0) is not
    included."""
    ab = np.asarray(alphas_cumprod, np.float64)
    T = ab.shape[0]
    if name not in SPACINGS:
        raise ValueError(f"Unknown timestep spacing {name!r}; choose one of {', '.join(SPACINGS)}.")
    if not 1 <= num_steps <= T - 1 or (name == "leading" and T // (num_steps + 1) < 1):
        raise ValueError(f"Cannot take {num_steps} {name} steps from a process of {T} steps.")
    table = schedule_sigmas(ab)
    if name == "karras":
        sigmas = karras_sigmas(table[0], table[-1], num_steps)
        t = sigma_to_t(sigmas, ab)
    elif name == "logsnr":  # uniform in log sigma = -lambda
        sigmas = np.exp(np.linspace(np.log(table[-1]), np.log(table[0]), num_steps))
        t = sigma_to_t(sigmas, ab)
    else:
        t = _integer_timesteps(name, T, num_steps, steps_offset)
        if t.min() < 0 or t.max() > T - 1:
            raise ValueError(f"{name} timesteps {t.tolist()} leave [0, {T - 1}].")
        sigmas = table[t.astype(np.int64)]
    alpha = 1.0 / np.sqrt(1.0 + sigmas**2)
    return t.astype(np.float64), alpha, sigmas * alpha


def timesteps(name: str, alphas_cumprod, num_steps: int, *, steps_offset: int = 0) -> np.ndarray:
    """The descending float64 model timesteps [num_steps] of spacing `name` (see `noise_levels`)."""
    return noise_levels(name, alphas_cumprod, num_steps, steps_offset=steps_offset)[0]
