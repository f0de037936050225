"""Noise schedules: beta schedules -> a frozen `Schedule` pytree of precomputed tables; respacing.

    from diffusion_jax.core import schedules
    sched = schedules.make_schedule("linear", 1000)            # DDPM's schedule
    fast = schedules.make_schedule("cosine", 4000, respacing="ddim50")
    fast.num_timesteps, fast.timestep_map      # 50, and the original step of each kept step

Every table is computed in float64 with numpy and stored as float32, so a schedule of T=4000 steps
keeps the precision of the reference implementations (DDPM's `diffusion_utils_2.py`,
improved-diffusion's `gaussian_diffusion.py`). Timesteps are indexed from 0: t=0 is the first
diffusion step, whose posterior is the data decoder. The schedule is a constant, never a parameter:
keep it out of the parameter and EMA pytrees; pass it to jitted functions as argument or closure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import struct

BETA_SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")


def _scaled_endpoints(
    num_timesteps: int, beta_start: float, beta_end: float
) -> tuple[float, float]:
    """DDPM's endpoints are for T=1000; improved-diffusion scales them by 1000/T for other T."""
    scale = 1000.0 / num_timesteps
    return scale * beta_start, scale * beta_end


def linear_beta_schedule(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """beta_t = linspace(beta_start, beta_end) (Ho et al. 2020), endpoints scaled by 1000/T."""
    start, end = _scaled_endpoints(num_timesteps, beta_start, beta_end)
    return np.linspace(start, end, num_timesteps, dtype=np.float64)


def quadratic_beta_schedule(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """beta_t = linspace(sqrt(beta_start), sqrt(beta_end))**2 (DDPM's "quad"), scaled by 1000/T."""
    start, end = _scaled_endpoints(num_timesteps, beta_start, beta_end)
    return np.linspace(start**0.5, end**0.5, num_timesteps, dtype=np.float64) ** 2


def sigmoid_beta_schedule(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """beta_t = beta_start + (beta_end - beta_start) sigmoid(linspace(-6, 6)), scaled by 1000/T."""
    start, end = _scaled_endpoints(num_timesteps, beta_start, beta_end)
    s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)))
    return start + (end - start) * s


def cosine_beta_schedule(
    num_timesteps: int, s: float = 0.008, max_beta: float = 0.999
) -> np.ndarray:
    """Nichol & Dhariwal (2021): alpha_bar(u) = cos((u + s) / (1 + s) * pi / 2)**2, u = t / T,
    beta_t = min(1 - alpha_bar((t + 1) / T) / alpha_bar(t / T), max_beta)."""
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


_SCHEDULE_FNS = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "quadratic": quadratic_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
}


def get_beta_schedule(name: str, num_timesteps: int, **kwargs) -> np.ndarray:
    """The float64 betas of a named schedule (one of `BETA_SCHEDULES`)."""
    if name not in _SCHEDULE_FNS:
        raise ValueError(
            f"Unknown beta schedule {name!r}; choose one of {', '.join(BETA_SCHEDULES)}."
        )
    if not isinstance(num_timesteps, int | np.integer) or num_timesteps < 2:
        raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}.")
    return _SCHEDULE_FNS[name](int(num_timesteps), **kwargs)


@struct.dataclass
class Schedule:
    """Every table of a diffusion process with T steps, each a float32 array [T]; names follow
    improved-diffusion's `GaussianDiffusion`. `timestep_map[t]` is the timestep of the original
    (unrespaced) process that step t stands for, the time input a network trained on the original
    process must be given (the identity when not respaced)."""

    betas: jnp.ndarray
    alphas_cumprod: jnp.ndarray  # alpha_bar_t
    alphas_cumprod_prev: jnp.ndarray  # alpha_bar_{t-1}, with alpha_bar_{-1} = 1
    alphas_cumprod_next: jnp.ndarray  # alpha_bar_{t+1}, with alpha_bar_T = 0
    sqrt_alphas_cumprod: jnp.ndarray
    sqrt_one_minus_alphas_cumprod: jnp.ndarray
    log_one_minus_alphas_cumprod: jnp.ndarray
    sqrt_recip_alphas_cumprod: jnp.ndarray
    sqrt_recipm1_alphas_cumprod: jnp.ndarray
    posterior_variance: jnp.ndarray  # beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
    # log beta~_t with beta~_0 = 0 replaced by beta~_1, so that the log is finite.
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray  # multiplies x_0 in mu~_t
    posterior_mean_coef2: jnp.ndarray  # multiplies x_t in mu~_t
    log_betas: jnp.ndarray  # the upper end of the learned_range interpolation
    # DDPM's "fixed_large" variance: beta_t, with beta~_1 at t=0 so that the decoder is sensible.
    fixed_large_variance: jnp.ndarray
    fixed_large_log_variance: jnp.ndarray
    timestep_map: jnp.ndarray  # int32 [T]

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def schedule_from_betas(
    betas: Sequence[float] | np.ndarray, timestep_map: Sequence[int] | np.ndarray | None = None
) -> Schedule:
    """Builds the `Schedule` of a process with the given betas (computed in float64)."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2:
        raise ValueError(f"betas must be a 1-D array of at least 2 steps, got shape {betas.shape}.")
    if not np.all((betas > 0) & (betas < 1)):
        bad = betas[(betas <= 0) | (betas >= 1)]
        raise ValueError(
            f"every beta must lie in (0, 1); got {bad[:3]}... A linear/quadratic/sigmoid schedule "
            "with very few steps overshoots 1 because its endpoints scale by 1000/T: use more "
            "timesteps, the cosine schedule, or respacing of a longer schedule."
        )
    num_timesteps = betas.shape[0]
    if timestep_map is None:
        timestep_map = np.arange(num_timesteps)
    timestep_map = np.asarray(timestep_map)
    if timestep_map.shape != (num_timesteps,):
        raise ValueError(
            f"timestep_map must have shape ({num_timesteps},), got {timestep_map.shape}."
        )

    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    alphas_cumprod_next = np.append(alphas_cumprod[1:], 0.0)
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    fixed_large_variance = np.append(posterior_variance[1], betas[1:])
    tables = dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        alphas_cumprod_next=alphas_cumprod_next,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(
            np.append(posterior_variance[1], posterior_variance[1:])
        ),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
        log_betas=np.log(betas),
        fixed_large_variance=fixed_large_variance,
        fixed_large_log_variance=np.log(fixed_large_variance),
    )
    arrays = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in tables.items()}
    return Schedule(**arrays, timestep_map=jnp.asarray(timestep_map, dtype=jnp.int32))


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """The sorted timesteps kept when respacing a process of `num_timesteps` steps.
    `section_counts` follows improved-diffusion: "ddimN" keeps every k-th step from 0 for the
    integer stride k that gives exactly N steps (DDIM's uniform skipping); "ddimqN" the N steps of
    `quadratic_timesteps` (DDIM's "quad" skipping); "10,15,20" (or a list) splits the process into
    equal sections and keeps that many evenly spaced steps from each, both ends of each section
    included; an integer N is one section of N steps."""
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddimq"):
            try:
                desired = int(spec[len("ddimq") :])
            except ValueError:
                raise ValueError(f"Bad respacing {section_counts!r}: expected 'ddimqN'.") from None
            return quadratic_timesteps(num_timesteps, desired)
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim") :])
            except ValueError:
                raise ValueError(f"Bad respacing {section_counts!r}: expected 'ddimN'.") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"Cannot take exactly {desired} steps from {num_timesteps} with an integer stride "
                f"('{spec}'); use a section count like '{desired}' instead."
            )
        try:
            counts = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"Bad respacing {section_counts!r}: expected 'ddimN' or comma-separated integers "
                "such as '10,15,20'."
            ) from None
    elif isinstance(section_counts, int | np.integer):
        counts = [int(section_counts)]
    else:
        counts = [int(x) for x in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"Section counts must be positive integers, got {section_counts!r}.")

    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"Cannot take {count} steps from a section of {size} steps.")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # A running float sum, not round(j * stride): where j * stride is a half-integer the
        # accumulated rounding decides the tie, and this picks the same steps as the reference.
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def quadratic_timesteps(num_timesteps: int, count: int) -> list[int]:
    """`count` steps crowded near t=0: DDIM's "quad" skip type (Song et al. 2021, CIFAR10 runs).
    The rule of the DDIM code: s_i = int(linspace(0, sqrt(0.8 T), count)[i] ** 2) (truncation, so
    the last step is int(0.8 T)). Near 0 the squares are closer than 1 apart and repeat; where the
    DDIM code would visit a step twice, each repeat here moves up to one past its predecessor,
    s_i = max(s_i, s_{i-1} + 1), so exactly `count` distinct increasing steps are returned."""
    if count < 2 or count > num_timesteps:
        raise ValueError(
            f"Cannot take {count} quadratically spaced steps from {num_timesteps}; "
            f"choose 2 <= count <= {num_timesteps}."
        )
    raw = np.linspace(0.0, math.sqrt(0.8 * num_timesteps), count) ** 2
    steps = [int(s) for s in raw]
    for i in range(1, count):
        steps[i] = max(steps[i], steps[i - 1] + 1)
    if steps[-1] >= num_timesteps:
        raise ValueError(
            f"Cannot take {count} distinct quadratically spaced steps from {num_timesteps}."
        )
    return steps


def respace_betas(
    betas: Sequence[float] | np.ndarray, use_timesteps: Iterable[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the process that visits only `use_timesteps`, keeping alpha_bar at each kept step:
    beta'_i = 1 - alpha_bar_{k_i} / alpha_bar_{k_{i-1}} (alpha_bar before the first kept step is 1).
    Returns (new_betas [K] float64, timestep_map [K] int: original index of each new step)."""
    betas = np.asarray(betas, dtype=np.float64)
    keep = np.array(sorted(set(int(t) for t in use_timesteps)), dtype=np.int64)
    if keep.size < 2 or keep[0] < 0 or keep[-1] >= betas.shape[0]:
        raise ValueError(
            f"use_timesteps must hold at least 2 distinct steps in [0, {betas.shape[0]}), "
            f"got {keep.tolist()[:10]}."
        )
    kept_alpha_bar = np.cumprod(1.0 - betas)[keep]
    new_betas = 1.0 - kept_alpha_bar / np.append(1.0, kept_alpha_bar[:-1])
    return new_betas, keep


def make_schedule(
    beta_schedule: str = "linear",
    num_timesteps: int = 1000,
    respacing: str | int | Sequence[int] | None = None,
    **schedule_kwargs,
) -> Schedule:
    """A named schedule of `num_timesteps` steps, optionally respaced (see `space_timesteps`)."""
    betas = get_beta_schedule(beta_schedule, num_timesteps, **schedule_kwargs)
    if respacing is None or respacing == "":
        return schedule_from_betas(betas)
    new_betas, timestep_map = respace_betas(betas, space_timesteps(num_timesteps, respacing))
    return schedule_from_betas(new_betas, timestep_map)


def extract(table: jnp.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
    """table[t] reshaped to broadcast against an array of rank `ndim` ([B] -> [B, 1, 1, 1])."""
    values = jnp.asarray(table)[t]
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))
