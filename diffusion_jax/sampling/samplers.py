"""Compiled samplers: ancestral (DDPM) and DDIM chains, each one `lax.fori_loop` / `lax.scan` over
the pure reverse steps of `diffusion.py`, with classifier-free and classifier guidance.

    sched = schedules.make_schedule("linear", 1000, respacing="250")   # or the full schedule
    x0 = sampling.sample_ancestral(apply_fn, params, sched, (16, 32, 32, 3), key,
                                   mean_type="eps", var_type="fixed_large")
    x0 = sampling.sample_ddim(apply_fn, params, schedules.make_schedule("linear", 1000,
                              respacing="ddim50"), (16, 32, 32, 3), key, eta=0.0)
    # classifier-free guidance (Ho & Salimans): one forward pass of batch 2B per step
    x0 = sampling.sample_ddim(..., y=labels, cfg_scale=3.0, num_classes=10)
    # classifier guidance (Dhariwal & Nichol): cond_fn(x_t, t_model, y) = grad_x log p(y | x_t)
    x0 = sampling.sample_ancestral(..., y=labels, cond_fn=cond_fn, classifier_scale=2.0)
    # (y also goes to apply_fn: an unconditional network's apply_fn must accept and drop it)
    x_T = sampling.ddim_invert(apply_fn, params, sched, x0)          # the eta=0 ODE, run forwards
    frames = sampling.interpolate(apply_fn, params, sched, x_a, x_b, jnp.linspace(0, 1, 8))
    x0, snapshots = sampling.progressive_x0(apply_fn, params, sched, shape, key, num_snapshots=10)

The network is given `Schedule.timestep_map[t]`, so a respaced schedule samples a network trained
on the full process with fewer steps. Randomness: x_T comes from fold_in(rng, T) and the noise of
step t from fold_in(rng, t), so a key reproduces a sample exactly, and the ancestral, DDIM and
progressive samplers share their x_T for one key. Samples are in [-1, 1] when `clip_denoised`
(images); use clip_denoised=False for other data. Unconditional samples from a class-conditional
model: y = the null labels (`models.unet.null_labels(B, num_classes)`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffusion_jax.core import diffusion
from diffusion_jax.core.schedules import Schedule

_STATIC = ("apply_fn", "shape", "mean_type", "var_type", "clip_denoised", "num_classes", "cond_fn")


def _model_output(apply_fn, params, schedule, x_t, t, y, *, var_type, cfg_scale, num_classes):
    """The network's output at (x_t, step t [B]); with `cfg_scale` w, the classifier-free guided
    output of one batched call on [x_t, x_t] with labels [y, null] (2B rows)."""
    t_model = diffusion.model_timesteps(schedule, t)
    if cfg_scale is None:
        return apply_fn(params, x_t, t_model, y)
    if y is None or num_classes is None:
        raise ValueError(
            "Classifier-free guidance (cfg_scale) needs class labels y and num_classes (the null "
            "label is num_classes)."
        )
    null = jnp.full_like(y, num_classes)
    both = apply_fn(
        params,
        jnp.concatenate([x_t, x_t]),
        jnp.concatenate([t_model, t_model]),
        jnp.concatenate([y, null]),
    )
    cond, uncond = jnp.split(both, 2)
    return diffusion.cfg_output(cond, uncond, cfg_scale, var_type)


def _make_out_fn(
    apply_fn,
    params,
    schedule,
    y,
    *,
    mean_type,
    var_type,
    clip_denoised,
    cfg_scale=None,
    num_classes=None,
    cond_fn=None,
    classifier_scale=1.0,
    guide_eps=False,
):
    """out_fn(x_t, t [B]) -> `p_mean_variance` dict, guided. Classifier guidance shifts the mean
    (ancestral, `condition_mean`) or, with `guide_eps`, eps and x_0 (DDIM, `condition_score`)."""

    def out_fn(x_t, t):
        output = _model_output(
            apply_fn,
            params,
            schedule,
            x_t,
            t,
            y,
            var_type=var_type,
            cfg_scale=cfg_scale,
            num_classes=num_classes,
        )
        out = diffusion.p_mean_variance(
            schedule,
            output,
            x_t,
            t,
            mean_type=mean_type,
            var_type=var_type,
            clip_denoised=clip_denoised,
        )
        if cond_fn is None:
            return out
        grad = cond_fn(x_t, diffusion.model_timesteps(schedule, t), y)
        if guide_eps:
            return diffusion.condition_score(schedule, out, x_t, t, grad, classifier_scale)
        mean = diffusion.condition_mean(out["mean"], out["variance"], grad, classifier_scale)
        return {**out, "mean": mean}

    return out_fn


def _x_init(rng, shape, num_timesteps, x_T):
    if x_T is not None:
        return jnp.asarray(x_T, jnp.float32).reshape(shape)
    return jax.random.normal(jax.random.fold_in(rng, num_timesteps), shape, jnp.float32)


def _ancestral_step(schedule, out_fn, rng, shape):
    """(i, x_t) -> (x_{t-1}, x_0_hat) at t = T-1-i."""

    def step(i, x_t):
        t = schedule.num_timesteps - 1 - i
        t_b = jnp.full((shape[0],), t, jnp.int32)
        out = out_fn(x_t, t_b)
        noise = jax.random.normal(jax.random.fold_in(rng, t), shape, jnp.float32)
        return diffusion.p_sample(schedule, out, t_b, noise), out["pred_xstart"]

    return step


@functools.partial(jax.jit, static_argnames=_STATIC)
def sample_ancestral(
    apply_fn,
    params,
    schedule: Schedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    *,
    y: jax.Array | None = None,
    mean_type: str = "eps",
    var_type: str = "fixed_large",
    clip_denoised: bool = True,
    cfg_scale: float | None = None,
    num_classes: int | None = None,
    cond_fn=None,
    classifier_scale: float = 1.0,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """x_T ~ N(0, I), then x_{t-1} ~ p(x_{t-1} | x_t) for t = T-1, ..., 0; returns x_0 [shape].

    Step t draws its noise from fold_in(rng, t), so a sample does not depend on the batch it
    shares a call with only through its own key split.
    `cfg_scale` w (with `num_classes`): classifier-free guidance, `diffusion.cfg_output`; None
    (the default) is one plain call per step, w=0 the same samples from a doubled batch.
    `cond_fn(x_t, t_model, y)` -> grad_x log p(y | x_t): classifier guidance with scale
    `classifier_scale`, mu + s Sigma grad (`diffusion.condition_mean`).
    `x_T`: start from this noise instead of drawing it."""
    out_fn = _make_out_fn(
        apply_fn,
        params,
        schedule,
        y,
        mean_type=mean_type,
        var_type=var_type,
        clip_denoised=clip_denoised,
        cfg_scale=cfg_scale,
        num_classes=num_classes,
        cond_fn=cond_fn,
        classifier_scale=classifier_scale,
    )
    step = _ancestral_step(schedule, out_fn, rng, shape)
    x_init = _x_init(rng, shape, schedule.num_timesteps, x_T)
    return jax.lax.fori_loop(0, schedule.num_timesteps, lambda i, x: step(i, x)[0], x_init)


@functools.partial(jax.jit, static_argnames=_STATIC)
def sample_ddim(
    apply_fn,
    params,
    schedule: Schedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    *,
    y: jax.Array | None = None,
    eta: float = 0.0,
    mean_type: str = "eps",
    var_type: str = "fixed_large",
    clip_denoised: bool = True,
    cfg_scale: float | None = None,
    num_classes: int | None = None,
    cond_fn=None,
    classifier_scale: float = 1.0,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """DDIM (Song et al. 2021): x_T ~ N(0, I) (or the given `x_T`), then `diffusion.ddim_step`
    for t = T-1, ..., 0; returns x_0 [shape]. eta=0 is deterministic given x_T. Usually run on a
    respaced schedule ("ddim50", "ddimq50", "50"). `var_type` only tells a learned-variance output
    apart (its variance channels are unused). Guidance as in `sample_ancestral`, except that
    classifier guidance shifts eps: eps - sqrt(1 - alpha_bar_t) s grad (`condition_score`)."""
    out_fn = _make_out_fn(
        apply_fn,
        params,
        schedule,
        y,
        mean_type=mean_type,
        var_type=var_type,
        clip_denoised=clip_denoised,
        cfg_scale=cfg_scale,
        num_classes=num_classes,
        cond_fn=cond_fn,
        classifier_scale=classifier_scale,
        guide_eps=True,
    )
    num_timesteps = schedule.num_timesteps

    def step(i, x_t):
        t = num_timesteps - 1 - i
        t_b = jnp.full((shape[0],), t, jnp.int32)
        noise = jax.random.normal(jax.random.fold_in(rng, t), shape, jnp.float32)
        return diffusion.ddim_step(schedule, out_fn(x_t, t_b), x_t, t_b, noise, eta)

    return jax.lax.fori_loop(0, num_timesteps, step, _x_init(rng, shape, num_timesteps, x_T))


@functools.partial(jax.jit, static_argnames=("apply_fn", "mean_type", "var_type", "clip_denoised"))
def ddim_invert(
    apply_fn,
    params,
    schedule: Schedule,
    x0: jax.Array,
    *,
    y: jax.Array | None = None,
    mean_type: str = "eps",
    var_type: str = "fixed_large",
    clip_denoised: bool = False,
) -> jax.Array:
    """DDIM inversion: the eta=0 ODE run from data to noise, `diffusion.ddim_reverse_step` for
    t = 0, ..., T-1 (x_0 stands in for x at step 0, as in improved-diffusion); returns x_T, which
    `sample_ddim(..., eta=0, x_T=x_T)` decodes back to about x0 (closer with more steps)."""
    out_fn = _make_out_fn(
        apply_fn,
        params,
        schedule,
        y,
        mean_type=mean_type,
        var_type=var_type,
        clip_denoised=clip_denoised,
    )

    def step(t, x_t):
        t_b = jnp.full((x0.shape[0],), t, jnp.int32)
        return diffusion.ddim_reverse_step(schedule, out_fn(x_t, t_b), x_t, t_b)

    return jax.lax.fori_loop(0, schedule.num_timesteps, step, jnp.asarray(x0, jnp.float32))


def slerp(x_a: jax.Array, x_b: jax.Array, lam: jax.Array) -> jax.Array:
    """Spherical interpolation per row (DDIM's latent interpolation): with theta the angle between
    the flattened x_a[i] and x_b[i], sin((1 - lam) theta) / sin(theta) x_a + sin(lam theta) /
    sin(theta) x_b (linear for parallel rows); lam [L] gives [L, *x_a.shape]."""
    flat_a, flat_b = x_a.reshape(x_a.shape[0], -1), x_b.reshape(x_b.shape[0], -1)
    cos = jnp.sum(flat_a * flat_b, -1) / (
        jnp.linalg.norm(flat_a, axis=-1) * jnp.linalg.norm(flat_b, axis=-1)
    )
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))  # [B]
    theta = theta.reshape(theta.shape + (1,) * (x_a.ndim - 1))
    lam = jnp.asarray(lam, jnp.float32).reshape((-1,) + (1,) * x_a.ndim)  # [L, 1, ...]
    sin = jnp.sin(theta)
    # parallel rows (sin theta ~ 0) fall back to linear interpolation instead of 0 / 0
    safe = sin > 1e-6
    coef_a = jnp.where(safe, jnp.sin((1.0 - lam) * theta) / jnp.where(safe, sin, 1.0), 1.0 - lam)
    coef_b = jnp.where(safe, jnp.sin(lam * theta) / jnp.where(safe, sin, 1.0), lam)
    return coef_a * x_a + coef_b * x_b


def interpolate(
    apply_fn,
    params,
    schedule: Schedule,
    x_a: jax.Array,
    x_b: jax.Array,
    lambdas: jax.Array,
    *,
    y: jax.Array | None = None,
    latents: bool = False,
    mean_type: str = "eps",
    var_type: str = "fixed_large",
    clip_denoised: bool = True,
) -> jax.Array:
    """Interpolates between images x_a and x_b [B, ...] (or, with `latents`, between two x_T):
    invert both with `ddim_invert`, `slerp` in x_T space at each of `lambdas` [L], decode with
    DDIM eta 0 in one batch; returns [L, B, ...]. `y` [B] are the labels of a conditional model."""
    kwargs = dict(mean_type=mean_type, var_type=var_type)
    if not latents:
        x_a = ddim_invert(apply_fn, params, schedule, x_a, y=y, **kwargs)
        x_b = ddim_invert(apply_fn, params, schedule, x_b, y=y, **kwargs)
    x_T = slerp(x_a, x_b, lambdas)  # [L, B, ...]
    num = x_T.shape[0] * x_T.shape[1]
    labels = None if y is None else jnp.tile(jnp.asarray(y), x_T.shape[0])
    x0 = sample_ddim(
        apply_fn,
        params,
        schedule,
        (num, *x_T.shape[2:]),
        jax.random.key(0),  # unused: eta=0 and x_T given
        y=labels,
        eta=0.0,
        clip_denoised=clip_denoised,
        x_T=x_T.reshape((num, *x_T.shape[2:])),
        **kwargs,
    )
    return x0.reshape(x_T.shape)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "num_snapshots"))
def progressive_x0(
    apply_fn,
    params,
    schedule: Schedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    *,
    num_snapshots: int,
    y: jax.Array | None = None,
    mean_type: str = "eps",
    var_type: str = "fixed_large",
    clip_denoised: bool = True,
    cfg_scale: float | None = None,
    num_classes: int | None = None,
    cond_fn=None,
    classifier_scale: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """The ancestral chain of `sample_ancestral` (the same samples for the same key), also
    returning x_0_hat after steps round(k T / K), k = 1..K = `num_snapshots` (DDPM's progressive
    generation figure): (x_0 [shape], snapshots [K, *shape]). A `lax.scan` over the K segments
    keeps only the snapshots. The last snapshot is x_0_hat at t=0, which is the sample itself
    (the t=0 mean is x_0_hat) unless classifier guidance moves it."""
    num_timesteps = schedule.num_timesteps
    if not 1 <= num_snapshots <= num_timesteps:
        raise ValueError(f"num_snapshots must lie in [1, {num_timesteps}], got {num_snapshots}.")
    out_fn = _make_out_fn(
        apply_fn,
        params,
        schedule,
        y,
        mean_type=mean_type,
        var_type=var_type,
        clip_denoised=clip_denoised,
        cfg_scale=cfg_scale,
        num_classes=num_classes,
        cond_fn=cond_fn,
        classifier_scale=classifier_scale,
    )
    step = _ancestral_step(schedule, out_fn, rng, shape)
    ends = [round((k + 1) * num_timesteps / num_snapshots) for k in range(num_snapshots)]
    bounds = jnp.asarray([[0] + ends[:-1], ends], jnp.int32).T  # [K, 2]: steps [start, end)

    def segment(carry, bound):
        carry = jax.lax.fori_loop(bound[0], bound[1], lambda i, c: step(i, c[0]), carry)
        return carry, carry[1]

    x_init = _x_init(rng, shape, num_timesteps, None)
    (x0, _), snapshots = jax.lax.scan(segment, (x_init, jnp.zeros(shape, jnp.float32)), bounds)
    return x0, snapshots
