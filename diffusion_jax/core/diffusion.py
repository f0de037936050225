"""The Gaussian diffusion process as pure functions of arrays: q(x_t|x_0), q(x_{t-1}|x_t,x_0),
p(x_{t-1}|x_t) and the conversions between the network's parameterisations.

    from diffusion_jax.core import diffusion, schedules
    sched = schedules.make_schedule("linear", 1000)
    x_t = diffusion.q_sample(sched, x_0, t, noise=eps)              # [B, H, W, C]
    out = diffusion.p_mean_variance(sched, x_t, t, model_output=apply_fn(params, x_t, t),
                                    mean_type="eps", var_type="fixed_large")
    x_prev = diffusion.p_sample(sched, out, t, noise=z)

Argument order: `schedule`, then the array the distribution is about (x_start for q(x_t|x_0) and
the training targets; x_t for the posterior, the reverse process and predict_*), then `t`; every
other array is keyword-only, so two arrays can never be swapped silently. Functions that run the
network take (apply_fn, params, schedule, x, t, ...) likewise (see `losses`). `p_sample` takes the
`p_mean_variance` dict in the place of x_t; `split_output` and the guidance helpers take at most
one array positionally (`cfg_eps`, `cfg_output` none). `t` is an int array [B], indexed from 0.
Functions take the network's *output*, never the network, so they compose with jit, vmap, grad and
any model. Notation follows Ho et al. (2020): alpha_bar_t = prod_{s<=t} (1 - beta_s).
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

from diffusion_jax.core.schedules import Schedule, extract

MeanType = Literal["eps", "x0", "v"]
VarType = Literal["fixed_small", "fixed_large", "learned", "learned_range"]
MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")


def _ex(schedule: Schedule, name: str, t: jnp.ndarray, like: jnp.ndarray) -> jnp.ndarray:
    return extract(getattr(schedule, name), t, like.ndim)


def check_types(mean_type: str, var_type: str) -> None:
    """Raises a ValueError naming the choices when a mean or variance type is unknown."""
    if mean_type not in MEAN_TYPES:
        raise ValueError(f"Unknown mean_type {mean_type!r}; choose one of {MEAN_TYPES}.")
    if var_type not in VAR_TYPES:
        raise ValueError(f"Unknown var_type {var_type!r}; choose one of {VAR_TYPES}.")


def learns_variance(var_type: str) -> bool:
    """True when the network outputs 2C channels: the mean prediction, then variance values."""
    return var_type in ("learned", "learned_range")


def q_mean_variance(schedule: Schedule, x_start: jnp.ndarray, t: jnp.ndarray):
    """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).
    Returns (mean, variance, log_variance)."""
    mean = _ex(schedule, "sqrt_alphas_cumprod", t, x_start) * x_start
    variance = _ex(schedule, "sqrt_one_minus_alphas_cumprod", t, x_start) ** 2
    log_variance = _ex(schedule, "log_one_minus_alphas_cumprod", t, x_start)
    return mean, variance, log_variance


def q_sample(
    schedule: Schedule, x_start: jnp.ndarray, t: jnp.ndarray, *, noise: jnp.ndarray
) -> jnp.ndarray:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, a draw from q(x_t | x_0)."""
    return (
        _ex(schedule, "sqrt_alphas_cumprod", t, x_start) * x_start
        + _ex(schedule, "sqrt_one_minus_alphas_cumprod", t, x_start) * noise
    )


def q_posterior_mean_variance(
    schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, *, x_start: jnp.ndarray
):
    """q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) with
    mu~_t = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) x_0
            + (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t) x_t,
    beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.
    Returns (mean, variance, log_variance_clipped); the log is clipped at t=0 where beta~_0 = 0."""
    mean = (
        _ex(schedule, "posterior_mean_coef1", t, x_t) * x_start
        + _ex(schedule, "posterior_mean_coef2", t, x_t) * x_t
    )
    variance = _ex(schedule, "posterior_variance", t, x_t)
    log_variance = _ex(schedule, "posterior_log_variance_clipped", t, x_t)
    return mean, variance, log_variance


def predict_xstart_from_eps(schedule: Schedule, x_t, t, *, eps):
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    return (
        _ex(schedule, "sqrt_recip_alphas_cumprod", t, x_t) * x_t
        - _ex(schedule, "sqrt_recipm1_alphas_cumprod", t, x_t) * eps
    )


def predict_eps_from_xstart(schedule: Schedule, x_t, t, *, x_start):
    """eps = (x_t / sqrt(alpha_bar_t) - x_0) / sqrt(1 / alpha_bar_t - 1)."""
    return (_ex(schedule, "sqrt_recip_alphas_cumprod", t, x_t) * x_t - x_start) / _ex(
        schedule, "sqrt_recipm1_alphas_cumprod", t, x_t
    )


def get_v(schedule: Schedule, x_start, t, *, eps):
    """The velocity target (Salimans & Ho 2022):
    v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
    return (
        _ex(schedule, "sqrt_alphas_cumprod", t, x_start) * eps
        - _ex(schedule, "sqrt_one_minus_alphas_cumprod", t, x_start) * x_start
    )


def predict_xstart_from_v(schedule: Schedule, x_t, t, *, v):
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
    return (
        _ex(schedule, "sqrt_alphas_cumprod", t, x_t) * x_t
        - _ex(schedule, "sqrt_one_minus_alphas_cumprod", t, x_t) * v
    )


def predict_eps_from_v(schedule: Schedule, x_t, t, *, v):
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
    return (
        _ex(schedule, "sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
        + _ex(schedule, "sqrt_alphas_cumprod", t, x_t) * v
    )


def predict_xstart(schedule: Schedule, x_t, t, *, output, mean_type: MeanType):
    """x_0 implied by `output`, the mean part of the network's output, under `mean_type`."""
    if mean_type == "eps":
        return predict_xstart_from_eps(schedule, x_t, t, eps=output)
    if mean_type == "x0":
        return output
    if mean_type == "v":
        return predict_xstart_from_v(schedule, x_t, t, v=output)
    raise ValueError(f"Unknown mean_type {mean_type!r}; choose one of {MEAN_TYPES}.")


def training_target(schedule: Schedule, x_start, t, *, noise, mean_type: MeanType):
    """What the network regresses onto under `mean_type`: eps, x_0 or v."""
    if mean_type == "eps":
        return noise
    if mean_type == "x0":
        return x_start
    if mean_type == "v":
        return get_v(schedule, x_start, t, eps=noise)
    raise ValueError(f"Unknown mean_type {mean_type!r}; choose one of {MEAN_TYPES}.")


def split_output(model_output: jnp.ndarray, *, x_t: jnp.ndarray, var_type: VarType):
    """Splits a learned-variance output [..., 2C] into (mean part, variance values), each [..., C];
    returns (model_output, None) for fixed variances. Checks the channel count either way."""
    channels = x_t.shape[-1]
    if learns_variance(var_type):
        if model_output.shape[-1] != 2 * channels:
            raise ValueError(
                f"var_type={var_type!r} needs a network output of 2C={2 * channels} channels "
                f"(mean, then variance values), got {model_output.shape[-1]}: build the model with "
                "a learned-variance head."
            )
        return model_output[..., :channels], model_output[..., channels:]
    if model_output.shape[-1] != channels:
        raise ValueError(
            f"var_type={var_type!r} needs a network output of C={channels} channels, got "
            f"{model_output.shape[-1]}."
        )
    return model_output, None


def p_mean_variance(
    schedule: Schedule,
    x_t: jnp.ndarray,
    t: jnp.ndarray,
    *,
    model_output: jnp.ndarray,
    mean_type: MeanType = "eps",
    var_type: VarType = "fixed_small",
    clip_denoised: bool = True,
    denoised_fn=None,
) -> dict[str, jnp.ndarray]:
    """p(x_{t-1} | x_t) = N(mu_theta(x_t, t), Sigma_theta(x_t, t)) from the network's output.
    The mean is the posterior mean mu~_t(x_0_hat, x_t) at the predicted x_0_hat, which is clipped to
    [-1, 1] when `clip_denoised` (after `denoised_fn`, if given). Variances:
      fixed_small:   beta~_t (the posterior variance; log clipped at t=0),
      fixed_large:   beta_t, with beta~_1 at t=0 (as the reference code does),
      learned:       exp(v), v the network's log-variance output,
      learned_range: exp(f log beta_t + (1 - f) log beta~_t), f = (v + 1) / 2 (Nichol & Dhariwal).
    Returns a dict of mean, variance, log_variance and pred_xstart, each shaped like x_t."""
    check_types(mean_type, var_type)
    mean_output, var_values = split_output(model_output, x_t=x_t, var_type=var_type)

    if var_type == "learned":
        log_variance = var_values
        variance = jnp.exp(log_variance)
    elif var_type == "learned_range":
        min_log = _ex(schedule, "posterior_log_variance_clipped", t, x_t)
        max_log = _ex(schedule, "log_betas", t, x_t)
        frac = (var_values + 1.0) / 2.0
        log_variance = frac * max_log + (1.0 - frac) * min_log
        variance = jnp.exp(log_variance)
    else:
        var_name, log_name = {
            "fixed_small": ("posterior_variance", "posterior_log_variance_clipped"),
            "fixed_large": ("fixed_large_variance", "fixed_large_log_variance"),
        }[var_type]
        variance = jnp.broadcast_to(_ex(schedule, var_name, t, x_t), x_t.shape)
        log_variance = jnp.broadcast_to(_ex(schedule, log_name, t, x_t), x_t.shape)

    pred_xstart = predict_xstart(schedule, x_t, t, output=mean_output, mean_type=mean_type)
    if denoised_fn is not None:
        pred_xstart = denoised_fn(pred_xstart)
    if clip_denoised:
        pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
    mean, _, _ = q_posterior_mean_variance(schedule, x_t, t, x_start=pred_xstart)
    return {
        "mean": mean,
        "variance": variance,
        "log_variance": log_variance,
        "pred_xstart": pred_xstart,
    }


def p_sample(
    schedule: Schedule, out: dict[str, jnp.ndarray], t: jnp.ndarray, *, noise: jnp.ndarray
) -> jnp.ndarray:
    """One ancestral step x_{t-1} = mu + exp(log_variance / 2) noise, with no noise at t=0;
    `out` is what `p_mean_variance` returns for (x_t, t)."""
    nonzero = (jnp.asarray(t) != 0).astype(noise.dtype)
    nonzero = nonzero.reshape(nonzero.shape + (1,) * (noise.ndim - nonzero.ndim))
    return out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise


def model_timesteps(schedule: Schedule, t: jnp.ndarray) -> jnp.ndarray:
    """The time input for the network at step t: the original step for a respaced schedule."""
    return schedule.timestep_map[t]


def ddim_step(
    schedule: Schedule,
    x_t: jnp.ndarray,
    t: jnp.ndarray,
    *,
    out: dict[str, jnp.ndarray],
    noise: jnp.ndarray,
    eta: float | jnp.ndarray = 0.0,
) -> jnp.ndarray:
    """One DDIM step (Song et al. 2021, eq. 12), x_t -> x_{t-1}, from `p_mean_variance`'s x_0_hat:
    eps_hat = (x_t - sqrt(alpha_bar_t) x_0_hat) / sqrt(1 - alpha_bar_t)  (re-derived, so that a
              clipped x_0_hat stays coherent with it),
    sigma_t = eta sqrt((1 - alpha_bar_{t-1}) / (1 - alpha_bar_t))
              * sqrt(1 - alpha_bar_t / alpha_bar_{t-1}),
    x_{t-1} = sqrt(alpha_bar_{t-1}) x_0_hat + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps_hat
              + sigma_t noise,
    with no noise at t=0. eta=0 is the deterministic DDIM; eta=1 is DDPM with beta~_t variance."""
    pred_xstart = out["pred_xstart"]
    eps = predict_eps_from_xstart(schedule, x_t, t, x_start=pred_xstart)
    alpha_bar = _ex(schedule, "alphas_cumprod", t, x_t)
    alpha_bar_prev = _ex(schedule, "alphas_cumprod_prev", t, x_t)
    sigma = (
        eta
        * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
        * jnp.sqrt(1.0 - alpha_bar / alpha_bar_prev)
    )
    # max(., 0): only float rounding (or eta > 1) can push the direction's variance below 0
    direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0))
    nonzero = (jnp.asarray(t) != 0).astype(x_t.dtype)
    nonzero = nonzero.reshape(nonzero.shape + (1,) * (x_t.ndim - nonzero.ndim))
    return jnp.sqrt(alpha_bar_prev) * pred_xstart + direction * eps + nonzero * sigma * noise


def ddim_reverse_step(
    schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, *, out: dict[str, jnp.ndarray]
) -> jnp.ndarray:
    """The deterministic DDIM step run forwards (eta 0, for inversion), x_t -> x_{t+1}:
    x_{t+1} = sqrt(alpha_bar_{t+1}) x_0_hat + sqrt(1 - alpha_bar_{t+1}) eps_hat, with eps_hat
    re-derived from x_t and x_0_hat as in `ddim_step` and alpha_bar_T = 0 (so x_T = eps_hat)."""
    pred_xstart = out["pred_xstart"]
    eps = predict_eps_from_xstart(schedule, x_t, t, x_start=pred_xstart)
    alpha_bar_next = _ex(schedule, "alphas_cumprod_next", t, x_t)
    return jnp.sqrt(alpha_bar_next) * pred_xstart + jnp.sqrt(1.0 - alpha_bar_next) * eps


def cfg_eps(*, cond: jnp.ndarray, uncond: jnp.ndarray, scale) -> jnp.ndarray:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): eps~ = (1 + w) eps_c - w eps_u, with
    eps_c = `cond`, eps_u = `uncond` and w = `scale` (w=0: the conditional model). The weights sum
    to 1, so the same mix of x_0 or v predictions gives the same guided sample: any `mean_type`."""
    return (1.0 + scale) * cond - scale * uncond


def cfg_output(*, cond: jnp.ndarray, uncond: jnp.ndarray, scale, var_type: VarType) -> jnp.ndarray:
    """`cfg_eps` on a whole network output: for a learned variance ([..., 2C]) only the mean
    channels are guided and the conditional variance channels are kept."""
    if not learns_variance(var_type):
        return cfg_eps(cond=cond, uncond=uncond, scale=scale)
    channels = cond.shape[-1] // 2
    guided = cfg_eps(cond=cond[..., :channels], uncond=uncond[..., :channels], scale=scale)
    return jnp.concatenate([guided, cond[..., channels:]], axis=-1)


def condition_mean(mean: jnp.ndarray, *, variance: jnp.ndarray, grad: jnp.ndarray, scale):
    """Classifier guidance for ancestral sampling (Dhariwal & Nichol 2021, Alg. 1):
    mu' = mu + s Sigma grad_x log p(y | x_t), s = `scale`, Sigma = `variance`."""
    return mean + scale * variance * grad


def condition_eps(eps: jnp.ndarray, *, grad: jnp.ndarray, scale, alpha_bar: jnp.ndarray):
    """Classifier guidance for DDIM (Dhariwal & Nichol 2021, Alg. 2):
    eps' = eps - sqrt(1 - alpha_bar_t) s grad_x log p(y | x_t), s = `scale`."""
    return eps - jnp.sqrt(1.0 - alpha_bar) * scale * grad


def condition_score(
    schedule: Schedule, x_t, t, *, out: dict[str, jnp.ndarray], grad: jnp.ndarray, scale
) -> dict[str, jnp.ndarray]:
    """`condition_eps` applied to a `p_mean_variance` dict: eps_hat from (x_t, x_0_hat), guided,
    then x_0_hat re-derived from the guided eps (not clipped again) and the mean recomputed."""
    eps = predict_eps_from_xstart(schedule, x_t, t, x_start=out["pred_xstart"])
    alpha_bar = _ex(schedule, "alphas_cumprod", t, x_t)
    eps = condition_eps(eps, grad=grad, scale=scale, alpha_bar=alpha_bar)
    pred_xstart = predict_xstart_from_eps(schedule, x_t, t, eps=eps)
    mean, _, _ = q_posterior_mean_variance(schedule, x_t, t, x_start=pred_xstart)
    return {**out, "mean": mean, "pred_xstart": pred_xstart}
