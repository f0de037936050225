"""Compiled ancestral (DDPM) and DDIM chains over `diffusion`'s reverse steps, with guidance.

    from diffusion_jax.sampling import Denoiser, Guidance, samplers
    sched = schedules.make_schedule("linear", 1000, respacing="250")   # or the full schedule
    x0 = samplers.sample_ancestral(apply_fn, params, sched, (16, 32, 32, 3), key,
                                   denoiser=Denoiser(mean_type="eps", var_type="fixed_large"))
    x0 = samplers.sample_ddim(apply_fn, params, schedules.make_schedule("linear", 1000,
                              respacing="ddim50"), (16, 32, 32, 3), key, eta=0.0)
    # classifier-free guidance (Ho & Salimans): one forward pass of batch 2B per step
    x0 = samplers.sample_ddim(..., y=labels, guidance=Guidance(cfg_scale=3.0, num_classes=10))
    # classifier guidance (Dhariwal & Nichol): cond_fn(x_t, t_model, y) = grad_x log p(y | x_t)
    x0 = samplers.sample_ancestral(..., y=labels,
                                   guidance=Guidance(cond_fn=cond_fn, classifier_scale=2.0))
    # (y also goes to apply_fn: an unconditional network's apply_fn must accept and drop it)
    x_T = samplers.ddim_invert(apply_fn, params, sched, x0)          # the eta=0 ODE, run forwards
    frames = samplers.interpolate(apply_fn, params, sched, x_a, x_b, jnp.linspace(0, 1, 8))
    x0, snapshots = samplers.progressive_x0(apply_fn, params, sched, shape, key, num_snapshots=10)

The network gets `Schedule.timestep_map[t]`, so a respaced schedule samples a network trained on
the full process with fewer steps. x_T comes from fold_in(rng, T), step t's noise from
fold_in(rng, t): a key reproduces a sample exactly, and the ancestral, DDIM and progressive
samplers share x_T. Samples are in [-1, 1] when `clip_denoised` (images; turn it off for other
data). Unconditional samples of a class-conditional model: `models.unet.null_labels` as y.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.core import diffusion
from diffusion_jax.core.schedules import Schedule

_STATIC = ("apply_fn", "shape", "denoiser")


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """How `diffusion.p_mean_variance` reads the network's output: `mean_type` (eps, x0 or v),
    `var_type` (DDIM only uses it to tell a learned-variance output apart), `clip_denoised` (clip
    x_0_hat to [-1, 1]: images). Frozen, validated, a static argument of the samplers."""

    mean_type: diffusion.MeanType = "eps"
    var_type: diffusion.VarType = "fixed_large"
    clip_denoised: bool = True

    def __post_init__(self):
        diffusion.check_types(self.mean_type, self.var_type)
        if not isinstance(self.clip_denoised, bool):
            raise ValueError(f"clip_denoised must be True or False, got {self.clip_denoised!r}.")


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance with weight `cfg_scale` w (`diffusion.cfg_output`; null label
    `num_classes`): None is one plain network call per step, w=0 the same samples from a doubled
    batch. Classifier guidance (if `cond_fn`): `classifier_scale` times `cond_fn(x_t, t_model, y)` =
    grad_x log p(y | x_t). A hashable pytree of two traced scales: new ones reuse compilations."""

    cfg_scale: float | None = None
    num_classes: int | None = None
    cond_fn: Callable | None = None
    classifier_scale: float = 1.0

    def __post_init__(self):
        # (also runs when jax rebuilds the pytree: only the static fields are checked for values)
        if self.cfg_scale is not None and self.num_classes is None:
            raise ValueError(
                "Classifier-free guidance (cfg_scale) needs num_classes (the null label is "
                "num_classes) and class labels y."
            )
        if self.num_classes is not None and not (
            isinstance(self.num_classes, numbers.Integral) and self.num_classes > 0
        ):
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}.")
        if self.cond_fn is not None and not callable(self.cond_fn):
            raise ValueError(f"cond_fn must be callable(x_t, t_model, y), got {self.cond_fn!r}.")


jax.tree_util.register_dataclass(
    Guidance, data_fields=["cfg_scale", "classifier_scale"], meta_fields=["num_classes", "cond_fn"]
)


def guided_network(apply_fn, params, *, y, var_type: str, guidance: Guidance):
    """network(x_t, t_model) -> the network's output, classifier-free guided when
    `guidance.cfg_scale` is set: one call on [x_t, x_t] with labels [y, null] (2B rows), mixed by
    `diffusion.cfg_output`. Classifier guidance is the caller's (it acts on mean or eps)."""
    g = guidance
    if g.cfg_scale is not None and y is None:
        raise ValueError("Classifier-free guidance (cfg_scale) needs class labels y.")

    def network(x_t, t_model):
        if g.cfg_scale is None:
            return apply_fn(params, x_t, t_model, y)
        both = apply_fn(
            params,
            jnp.concatenate([x_t, x_t]),
            jnp.concatenate([t_model, t_model]),
            jnp.concatenate([y, jnp.full_like(y, g.num_classes)]),
        )
        cond, uncond = jnp.split(both, 2)
        return diffusion.cfg_output(cond=cond, uncond=uncond, scale=g.cfg_scale, var_type=var_type)

    return network


def make_out_fn(
    apply_fn,
    params,
    schedule: Schedule,
    *,
    y: jax.Array | None = None,
    denoiser: Denoiser = Denoiser(),
    guidance: Guidance = Guidance(),
    guide_eps: bool = False,
):
    """out_fn(x_t, t [B]) -> the guided `diffusion.p_mean_variance` dict at step t. CFG runs the
    network once on [x_t, x_t] with labels [y, null] (2B rows); classifier guidance shifts the mean
    (ancestral: `condition_mean`) or, with `guide_eps`, eps, x_0_hat (DDIM, `condition_score`)."""
    g = guidance
    network = guided_network(apply_fn, params, y=y, var_type=denoiser.var_type, guidance=g)

    def out_fn(x_t, t):
        t_model = diffusion.model_timesteps(schedule, t)
        output = network(x_t, t_model)
        out = diffusion.p_mean_variance(
            schedule, x_t, t, model_output=output, **dataclasses.asdict(denoiser)
        )
        if g.cond_fn is None:
            return out
        grad, scale = g.cond_fn(x_t, t_model, y), g.classifier_scale
        if guide_eps:
            return diffusion.condition_score(schedule, x_t, t, out=out, grad=grad, scale=scale)
        mean = diffusion.condition_mean(
            out["mean"], variance=out["variance"], grad=grad, scale=scale
        )
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
        return diffusion.p_sample(schedule, out, t_b, noise=noise), out["pred_xstart"]

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
    denoiser: Denoiser = Denoiser(),
    guidance: Guidance = Guidance(),
    x_T: jax.Array | None = None,
) -> jax.Array:
    """x_T ~ N(0, I) (or the given `x_T`), then x_{t-1} ~ p(x_{t-1} | x_t) for t = T-1, ..., 0;
    returns x_0 [shape]. `guidance`: classifier-free (`diffusion.cfg_output`) and classifier
    guidance mu + s Sigma grad (`condition_mean`)."""
    out_fn = make_out_fn(apply_fn, params, schedule, y=y, denoiser=denoiser, guidance=guidance)
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
    denoiser: Denoiser = Denoiser(),
    guidance: Guidance = Guidance(),
    x_T: jax.Array | None = None,
) -> jax.Array:
    """DDIM (Song et al. 2021): `sample_ancestral` with `diffusion.ddim_step`, deterministic given
    x_T for eta=0, usually on a respaced schedule ("ddim50", "ddimq50", "50"); classifier guidance
    shifts eps instead: eps - sqrt(1 - alpha_bar_t) s grad (`condition_score`)."""
    out_fn = make_out_fn(
        apply_fn, params, schedule, y=y, denoiser=denoiser, guidance=guidance, guide_eps=True
    )
    num_timesteps = schedule.num_timesteps

    def step(i, x_t):
        t = num_timesteps - 1 - i
        t_b = jnp.full((shape[0],), t, jnp.int32)
        noise = jax.random.normal(jax.random.fold_in(rng, t), shape, jnp.float32)
        return diffusion.ddim_step(schedule, x_t, t_b, out=out_fn(x_t, t_b), noise=noise, eta=eta)

    return jax.lax.fori_loop(0, num_timesteps, step, _x_init(rng, shape, num_timesteps, x_T))


@functools.partial(jax.jit, static_argnames=("apply_fn", "denoiser"))
def ddim_invert(
    apply_fn,
    params,
    schedule: Schedule,
    x0: jax.Array,
    *,
    y: jax.Array | None = None,
    denoiser: Denoiser = Denoiser(clip_denoised=False),
) -> jax.Array:
    """DDIM inversion: the eta=0 ODE run from data to noise, `diffusion.ddim_reverse_step` for
    t = 0, ..., T-1 (x_0 stands in for x at step 0, as in improved-diffusion); returns x_T, which
    `sample_ddim(..., eta=0, x_T=x_T)` decodes back to about x0 (closer with more steps)."""
    out_fn = make_out_fn(apply_fn, params, schedule, y=y, denoiser=denoiser)

    def step(t, x_t):
        t_b = jnp.full((x0.shape[0],), t, jnp.int32)
        return diffusion.ddim_reverse_step(schedule, x_t, t_b, out=out_fn(x_t, t_b))

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
    denoiser: Denoiser = Denoiser(),
) -> jax.Array:
    """[L, B, ...] between images x_a and x_b [B, ...] (with `latents`, two x_T): `ddim_invert`
    (which never clips x_0_hat) both, `slerp` at each of `lambdas` [L], decode with DDIM eta 0 in
    one batch (`denoiser.clip_denoised` applies here). `y` [B]: a conditional model's labels."""
    if not latents:
        unclipped = dataclasses.replace(denoiser, clip_denoised=False)
        invert = functools.partial(ddim_invert, apply_fn, params, schedule, y=y, denoiser=unclipped)
        x_a, x_b = invert(x_a), invert(x_b)
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
        denoiser=denoiser,
        x_T=x_T.reshape((num, *x_T.shape[2:])),
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
    denoiser: Denoiser = Denoiser(),
    guidance: Guidance = Guidance(),
) -> tuple[jax.Array, jax.Array]:
    """`sample_ancestral`'s chain (same samples per key) -> (x_0 [shape], snapshots [K, *shape]) of
    x_0_hat after steps round(k T / K), k = 1..K = `num_snapshots` (DDPM's progressive generation
    figure); the last is the sample (t=0 mean = x_0_hat) unless classifier guidance moves it."""
    num_timesteps = schedule.num_timesteps
    if not 1 <= num_snapshots <= num_timesteps:
        raise ValueError(f"num_snapshots must lie in [1, {num_timesteps}], got {num_snapshots}.")
    out_fn = make_out_fn(apply_fn, params, schedule, y=y, denoiser=denoiser, guidance=guidance)
    step = _ancestral_step(schedule, out_fn, rng, shape)
    ends = [round((k + 1) * num_timesteps / num_snapshots) for k in range(num_snapshots)]
    bounds = jnp.asarray([[0] + ends[:-1], ends], jnp.int32).T  # [K, 2]: steps [start, end)

    def segment(carry, bound):
        carry = jax.lax.fori_loop(bound[0], bound[1], lambda i, c: step(i, c[0]), carry)
        return carry, carry[1]

    x_init = _x_init(rng, shape, num_timesteps, None)
    (x0, _), snapshots = jax.lax.scan(segment, (x_init, jnp.zeros(shape, jnp.float32)), bounds)
    return x0, snapshots
