"""Likelihood terms and training losses: KL, the discretised Gaussian decoder, the variational bound
in bits/dim (L_T, L_{t-1}, L_0), L_simple and the hybrid loss, and the full bound over all T steps.

    from diffusion_jax.core import losses
    terms = losses.training_losses(apply_fn, params, sched, x_0, t, noise=eps, rng=dropout_key,
                                   loss_type="mse")         # L_simple: terms["loss"] is [B]
    bpd = losses.calc_bpd_loop(apply_fn, params, sched, x_0, key,
                               mean_type="eps", var_type="fixed_large")
    bpd["total_bpd"]                                        # [B] negative ELBO in bits/dim

`apply_fn(params, x_t, t, y=None, *, rng=None, train=False)` is any network (see
`diffusion_jax.models.make_apply_fn`); it is given the original timestep of a respaced schedule
(`Schedule.timestep_map`). Data live in [-1, 1], discretised to 256 levels. All per-example terms
are means over dimensions ("mean_flat"), as in the reference implementations. Argument order: as in
`diffusion` (x_t for the per-step terms, which compare posterior and reverse process at x_t), but
`calc_bpd_loop` takes its `rng` key in the place of t and `normal_kl` keeps the paper's order.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from diffusion_jax.core import diffusion
from diffusion_jax.core.diffusion import MeanType, VarType
from diffusion_jax.core.schedules import Schedule

LOSS_TYPES = ("mse", "rescaled_mse", "hybrid", "kl", "rescaled_kl")
_LOG2 = math.log(2.0)


def mean_flat(x: jnp.ndarray) -> jnp.ndarray:
    """Mean over every axis but the batch axis: [B, ...] -> [B]."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats (the paper's
    positional order: the arguments are the two Gaussians, not arrays of one distribution):
    0.5 (-1 + logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^(-logvar2)).
    Written with expm1 so that nearly equal variances (the prior term, where the KL is ~1e-5) do
    not lose their digits to cancellation in float32."""
    d = logvar1 - logvar2
    return 0.5 * (jnp.expm1(d) - d + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """DDPM's tanh approximation of Phi(x): 0.5 (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """log p(x) of data x in [-1, 1] (256 levels) under N(means, e^(2 log_scales)).
    Each bin is [x - 1/255, x + 1/255] (width 2/255); the edge bins are open-ended (the bin of -1
    reaches to -inf, that of 1 to +inf), so the 256 probabilities sum to 1. Probabilities are
    floored at 1e-12 before the log, as in the reference code."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(
        x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)
    )


def vb_terms_bpd(
    schedule: Schedule,
    x_t: jnp.ndarray,
    t: jnp.ndarray,
    *,
    x_start: jnp.ndarray,
    model_output: jnp.ndarray,
    mean_type: MeanType = "eps",
    var_type: VarType = "fixed_small",
    clip_denoised: bool = True,
) -> dict[str, jnp.ndarray]:
    """One term of the variational bound per example, in bits per dimension:
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, and the decoder
    L_0 = -log p(x_0 | x_1) for t = 0 (the discretised Gaussian likelihood).
    Returns {"output": [B], "pred_xstart": like x_t}."""
    true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(
        schedule, x_t, t, x_start=x_start
    )
    out = diffusion.p_mean_variance(
        schedule,
        x_t,
        t,
        model_output=model_output,
        mean_type=mean_type,
        var_type=var_type,
        clip_denoised=clip_denoised,
    )
    kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"]))
    decoder_nll = -mean_flat(
        discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
    )
    output = jnp.where(jnp.asarray(t) == 0, decoder_nll, kl) / _LOG2
    return {"output": output, "pred_xstart": out["pred_xstart"]}


def prior_bpd(schedule: Schedule, x_start: jnp.ndarray) -> jnp.ndarray:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension, per example [B]. It has no
    parameters; it measures how close the last step comes to pure noise."""
    t = jnp.full((x_start.shape[0],), schedule.num_timesteps - 1, dtype=jnp.int32)
    mean, _, log_variance = diffusion.q_mean_variance(schedule, x_start, t)
    return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / _LOG2


def losses_from_output(
    schedule: Schedule,
    x_t: jnp.ndarray,
    t: jnp.ndarray,
    *,
    x_start: jnp.ndarray,
    noise: jnp.ndarray,
    model_output: jnp.ndarray,
    loss_type: str = "mse",
    mean_type: MeanType = "eps",
    var_type: VarType = "fixed_large",
) -> dict[str, jnp.ndarray]:
    """Per-example losses [B] from the network's output at x_t = q_sample(x_start, t, noise=noise).

    loss_type:
      "mse":          L_simple, ||target - prediction||^2 averaged over dimensions (target eps,
                      x0 or v by mean_type); plus the VB term for the variance when it is learned.
                      The VB term sees the mean through stop_gradient: it trains the variance only.
      "rescaled_mse" / "hybrid": the same with the VB term scaled by T/1000 (Nichol & Dhariwal's
                      L_hybrid = L_simple + 0.001 L_vlb); "hybrid" insists on a learned variance.
      "kl":           the variational bound term L_{t-1} (the decoder NLL at t=0) in bits/dim.
      "rescaled_kl":  the same times T, an unbiased estimate of the whole bound minus L_T.
    Returns {"loss": [B], "mse": [B] (mse losses), "vb": [B] (when computed)}."""
    diffusion.check_types(mean_type, var_type)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}.")
    if loss_type == "hybrid" and not diffusion.learns_variance(var_type):
        raise ValueError(
            "loss_type='hybrid' trains a learned variance: use var_type='learned_range' (or "
            "'learned'), or loss_type='mse' for L_simple with a fixed variance."
        )
    num_timesteps = schedule.num_timesteps
    types = dict(mean_type=mean_type, var_type=var_type, clip_denoised=False)
    terms = {}
    if loss_type in ("kl", "rescaled_kl"):
        vb = vb_terms_bpd(schedule, x_t, t, x_start=x_start, model_output=model_output, **types)
        terms["vb"] = vb["output"]
        terms["loss"] = terms["vb"] * num_timesteps if loss_type == "rescaled_kl" else terms["vb"]
        return terms

    mean_output, var_values = diffusion.split_output(model_output, x_t=x_t, var_type=var_type)
    if var_values is not None:
        frozen = jnp.concatenate([jax.lax.stop_gradient(mean_output), var_values], axis=-1)
        vb = vb_terms_bpd(schedule, x_t, t, x_start=x_start, model_output=frozen, **types)
        vb = vb["output"]
        if loss_type in ("rescaled_mse", "hybrid"):
            vb = vb * (num_timesteps / 1000.0)
        terms["vb"] = vb
    target = diffusion.training_target(schedule, x_start, t, noise=noise, mean_type=mean_type)
    terms["mse"] = mean_flat(jnp.square(target - mean_output))
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms


def training_losses(
    apply_fn,
    params,
    schedule: Schedule,
    x_start: jnp.ndarray,
    t: jnp.ndarray,
    *,
    noise: jnp.ndarray,
    y: jnp.ndarray | None = None,
    rng: jax.Array | None = None,
    train: bool = True,
    loss_type: str = "mse",
    mean_type: MeanType = "eps",
    var_type: VarType = "fixed_large",
) -> dict[str, jnp.ndarray]:
    """Diffuses x_0 to x_t with `noise`, runs the network, and returns `losses_from_output`'s terms.
    `t` [B] are the timesteps (see `diffusion_jax.core.timestep_sampling` for uniform and importance
    sampled draws and their weights); `rng` drives dropout when `train`."""
    x_t = diffusion.q_sample(schedule, x_start, t, noise=noise)
    model_output = apply_fn(
        params, x_t, diffusion.model_timesteps(schedule, t), y, rng=rng, train=train
    )
    return losses_from_output(
        schedule,
        x_t,
        t,
        x_start=x_start,
        noise=noise,
        model_output=model_output,
        loss_type=loss_type,
        mean_type=mean_type,
        var_type=var_type,
    )


@functools.partial(jax.jit, static_argnames=("apply_fn", "mean_type", "var_type", "clip_denoised"))
def calc_bpd_loop(
    apply_fn,
    params,
    schedule: Schedule,
    x_start: jnp.ndarray,
    rng: jax.Array,
    *,
    y: jnp.ndarray | None = None,
    mean_type: MeanType = "eps",
    var_type: VarType = "fixed_large",
    clip_denoised: bool = True,
) -> dict[str, jnp.ndarray]:
    """The whole variational bound of a batch in bits/dim, one compiled scan over t = T-1, ..., 0.
    At each t a fresh x_t ~ q(x_t | x_0) (noise from fold_in(rng, t)) gives one bound term. `rng`
    is one key for the batch, or keys [B] (example i's noise is then normal(fold_in(rng[i], t)), so
    its bound does not depend on the batch it is in). Returns, per example: total_bpd [B] =
    prior_bpd + sum_t vb[:, t]; prior_bpd [B] (L_T); vb [B, T], xstart_mse [B, T] and mse [B, T]
    (eps MSE), column t being step t as in DDPM's code (improved-diffusion reverses the columns)."""
    batch = x_start.shape[0]
    types = dict(mean_type=mean_type, var_type=var_type, clip_denoised=clip_denoised)
    typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
    per_example = rng.ndim == (1 if typed else 2)

    def draw_noise(t):
        if per_example:
            one = functools.partial(jax.random.normal, shape=x_start.shape[1:], dtype=x_start.dtype)
            return jax.vmap(lambda k: one(jax.random.fold_in(k, t)))(rng)
        return jax.random.normal(jax.random.fold_in(rng, t), x_start.shape, x_start.dtype)

    def term(_, t):
        noise = draw_noise(t)
        t_b = jnp.full((batch,), t, dtype=jnp.int32)
        x_t = diffusion.q_sample(schedule, x_start, t_b, noise=noise)
        model_output = apply_fn(params, x_t, diffusion.model_timesteps(schedule, t_b), y)
        out = vb_terms_bpd(schedule, x_t, t_b, x_start=x_start, model_output=model_output, **types)
        eps = diffusion.predict_eps_from_xstart(schedule, x_t, t_b, x_start=out["pred_xstart"])
        xstart_mse = mean_flat(jnp.square(out["pred_xstart"] - x_start))
        return None, (out["output"], xstart_mse, mean_flat(jnp.square(eps - noise)))

    steps = jnp.arange(schedule.num_timesteps - 1, -1, -1, dtype=jnp.int32)
    _, per_t = jax.lax.scan(term, None, steps)  # each [T, B], rows in the order T-1, ..., 0
    vb, xstart_mse, mse = (jnp.flip(a, axis=0).T for a in per_t)
    prior = prior_bpd(schedule, x_start)
    return {
        "total_bpd": jnp.sum(vb, axis=1) + prior,
        "prior_bpd": prior,
        "vb": vb,
        "xstart_mse": xstart_mse,
        "mse": mse,
    }
