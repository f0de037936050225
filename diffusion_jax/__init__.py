"""diffusion_jax: denoising diffusion probabilistic models as pure JAX functions and Flax modules.

    import diffusion_jax as dj
    sched = dj.make_schedule("linear", 1000)
    x_t = dj.q_sample(sched, x_0, t, noise=eps)                         # q(x_t | x_0)
    terms = dj.training_losses(apply_fn, params, sched, x_0, t, noise=eps)
    parts = dj.diffusion_parts(dj.get_config("digits"))                 # network, optimizer, ...
    train_step = dj.make_train_step(parts)                              # pure: (state, batch)
    x0 = dj.sample_ddim(parts.apply_fn, params, respaced, (16, 8, 8, 1), key)

Each folder is one stage or layer and every import goes down (README "Layout"). The names
below load on first use, so that importing one stage does not import the others.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "diffusion_jax.core.schedules": ("Schedule", "make_schedule", "get_beta_schedule",
                                     "space_timesteps"),
    "diffusion_jax.core.diffusion": ("q_sample", "q_mean_variance", "q_posterior_mean_variance",
                                     "p_mean_variance", "p_sample", "ddim_step", "get_v",
                                     "predict_xstart_from_eps", "cfg_eps", "condition_mean",
                                     "condition_score"),
    "diffusion_jax.core.losses": ("training_losses", "vb_terms_bpd", "prior_bpd", "calc_bpd_loop",
                                  "normal_kl", "discretized_gaussian_log_likelihood"),
    "diffusion_jax.core.timestep_sampling": ("sample_uniform", "sample_importance"),
    "diffusion_jax.models": ("UNet", "ddpm_unet", "make_apply_fn", "count_params"),
    "diffusion_jax.models.factory": ("create_model", "create_classifier"),
    "diffusion_jax.configs": ("get_config", "base_config"),
    "diffusion_jax.setup": ("Parts", "diffusion_parts", "classifier_parts", "make_optimizer"),
    "diffusion_jax.sampling.samplers": ("Denoiser", "Guidance", "sample_ancestral", "sample_ddim",
                                        "ddim_invert", "interpolate", "progressive_x0"),
    "diffusion_jax.sampling.runs": ("Run", "load_run", "load_classifier"),
    "diffusion_jax.training.state": ("TrainState", "init_state", "apply_gradients"),
    "diffusion_jax.training.step": ("make_train_step", "compile_train_step"),
    "diffusion_jax.training.train": ("train",),
}  # fmt: skip
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'diffusion_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
