"""The guided network seen by the fast solvers: (x_0_hat, eps_hat) at any noise level.

    predict = make_predict_fn(apply_fn, params, y=y, denoiser=denoiser, guidance=guidance)
    x0, eps = predict(x_t, t_model, alpha, sigma)     # x_t = alpha x_0 + sigma eps

The solvers (DPM-Solver++, UniPC, Euler/Heun in sigma) step between noise levels of their own
choosing: `t_model` [B] is the (possibly fractional) timestep the network is fed, `alpha`, `sigma`
[B] the signal and noise scales of x_t at that level (alpha^2 + sigma^2 = 1 for a DDPM process).
The output is read by `denoiser.mean_type` (eps, x0 or v; a learned variance's channels are
dropped), classifier-free guidance mixes the conditional and null-label outputs of one batched
call (`diffusion.cfg_output`), and classifier guidance shifts eps by -sigma s grad log p(y | x_t)
(`diffusion.condition_eps`), x_0 following from the guided eps. `denoiser.clip_denoised` clips
x_0_hat to [-1, 1] (eps then re-derived).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.core import diffusion
from diffusion_jax.sampling.samplers import Denoiser, Guidance, guided_network


def _bcast(a: jax.Array, like: jax.Array) -> jax.Array:
    return jnp.reshape(a, a.shape + (1,) * (like.ndim - a.ndim))


def make_predict_fn(
    apply_fn,
    params,
    *,
    y: jax.Array | None = None,
    denoiser: Denoiser,
    guidance: Guidance,
):
    """predict(x_t, t_model [B], alpha [B], sigma [B]) -> (x_0_hat, eps_hat), guided."""
    g = guidance
    network = guided_network(apply_fn, params, y=y, var_type=denoiser.var_type, guidance=g)

    def predict(x_t, t_model, alpha, sigma):
        a, s = _bcast(alpha, x_t), _bcast(sigma, x_t)
        out, _ = diffusion.split_output(network(x_t, t_model), x_t=x_t, var_type=denoiser.var_type)
        if denoiser.mean_type == "eps":
            eps = out
            x0 = (x_t - s * eps) / a
        elif denoiser.mean_type == "x0":
            x0 = out
            eps = (x_t - a * x0) / s
        else:  # v = alpha eps - sigma x_0
            x0 = a * x_t - s * out
            eps = s * x_t + a * out
        if g.cond_fn is not None:
            grad = g.cond_fn(x_t, t_model, y)
            eps = eps - s * g.classifier_scale * grad
            x0 = (x_t - s * eps) / a
        if denoiser.clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = (x_t - a * x0) / s
        return x0, eps

    return predict
