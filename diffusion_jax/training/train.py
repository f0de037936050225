"""Training: the pure, data-parallel train step and the loop around it.

    from diffusion_jax.training import train
    train.train(config, "runs/cifar10")         # resumes from runs/cifar10/checkpoints if present

    step_fn = train.make_train_step(apply_fn, tx, lr_fn, schedule, config, num_classes=0)
    state, metrics = step_fn(state, {"image": x0})          # pure: jit it, shard it, test it

The step draws every random number from fold_in(state.rng, state.step), split once per purpose
(timesteps, noise, dropout, label dropping), so a run restarted from a checkpoint replays the same
numbers, and the global batch gives the same update on 1 device or 8, on 1 host or 2. It is
jitted with the batch split over every device and the state donated; the state is replicated, or
with training.fsdp > 1 each large array is split over the mesh's 'fsdp' axis (FSDP: the same
update, with 1/fsdp of the parameters, EMA and optimizer state on each device).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import checkpoint, parallel
from diffusion_jax.core import losses, schedules
from diffusion_jax.core import timestep_sampling as ts
from diffusion_jax.data import images
from diffusion_jax.data import pipeline as data
from diffusion_jax.models import make_apply_fn
from diffusion_jax.models.factory import create_model
from diffusion_jax.sampling import samplers as sampling
from diffusion_jax.training import loop
from diffusion_jax.training.loop import NonFiniteError  # noqa: F401 (part of this module's API)
from diffusion_jax.training.state import (
    TrainState,
    apply_gradients,
    check_on_nonfinite,
    create_train_state,
    make_optimizer,
)

# ----------------------------------------------------------------------------- the step


def _split_micro(x: jax.Array, accum: int) -> jax.Array:
    """[B, ...] -> [accum, B / accum, ...], micro-batch i = rows i, i + accum, ...

    Taking every accum-th row keeps each device's rows on that device when B is sharded."""
    return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)


def make_train_step(
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    lr_fn: Callable,
    schedule: schedules.Schedule,
    config,
    *,
    num_classes: int = 0,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`train_step(state, batch) -> (state, metrics)` for `config.diffusion` and `config.training`.

    batch: {"image": [B, ...] in [-1, 1], "label": [B] int (class-conditional models only)}.
    A step whose loss or gradient is not finite leaves params, EMA and optimizer untouched and
    counts in `state.skipped`; with training.on_nonfinite == "error" every later step is frozen
    too, and the loop raises naming the step."""
    d, tr = config.diffusion, config.training
    accum = int(tr.grad_accum_steps)
    importance = d.timestep_sampler == "importance"
    if d.timestep_sampler not in ("uniform", "importance"):
        raise ValueError(
            f"diffusion.timestep_sampler must be 'uniform' or 'importance', got "
            f"{d.timestep_sampler!r}."
        )
    check_on_nonfinite(tr)
    loss_kw = dict(loss_type=d.loss_type, mean_type=d.mean_type, var_type=d.var_type)

    def loss_fn(params, x0, y, t, weights, noise, key):
        terms = losses.training_losses(
            apply_fn, params, schedule, x0, t, noise, y=y, rng=key, train=True, **loss_kw
        )
        return jnp.mean(terms["loss"] * weights), terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
        k_t, k_noise, k_drop, k_label = keys
        x0 = batch["image"]
        b = x0.shape[0]
        if importance:
            t, weights = ts.sample_importance(k_t, b, state.loss_history)
        else:
            t, weights = ts.sample_uniform(k_t, b, schedule.num_timesteps)
        noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
        y = batch.get("label") if num_classes else None
        if y is not None and d.class_drop_prob > 0:
            drop = jax.random.bernoulli(k_label, d.class_drop_prob, (b,))
            y = jnp.where(drop, num_classes, y)

        if accum == 1:
            (loss, terms), grads = grad_fn(state.params, x0, y, t, weights, noise, k_drop)
        else:
            micro = [_split_micro(a, accum) for a in (x0, t, weights, noise)]
            micro_y = None if y is None else _split_micro(y, accum)

            def body(grad_sum, i):
                xi, ti, wi, ni = (a[i] for a in micro)
                yi = None if micro_y is None else micro_y[i]
                (li, terms_i), gi = grad_fn(
                    state.params, xi, yi, ti, wi, ni, jax.random.fold_in(k_drop, i)
                )
                return jax.tree_util.tree_map(jnp.add, grad_sum, gi), (li, terms_i)

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            grads, (micro_loss, micro_terms) = jax.lax.scan(body, zeros, jnp.arange(accum))
            grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
            loss = jnp.mean(micro_loss)
            # back to batch order: [accum, B / accum] -> [B]
            terms = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1).reshape(b), micro_terms)

        history = state.loss_history
        if importance:
            history = ts.update_loss_history(history, t, terms["loss"])
        state, grad_norm, finite = apply_gradients(state, grads, loss, tx, tr, loss_history=history)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr_fn(state.step - 1),
            "finite": finite,
            **{f"{k}_mean": jnp.mean(v) for k, v in terms.items() if k != "loss"},
        }
        return state, metrics

    return train_step


def donate_by_default(mesh) -> bool:
    """Whether `compile_train_step` donates the state: on GPUs and TPUs, where it halves the
    state's memory, and not on CPUs. There, writing the new state over the old one makes XLA copy
    the old params, EMA and Adam moments first (XLA's temporaries 703 MiB instead of 243 MiB for
    the CIFAR-10 U-Net at batch 8), and the step was 8% slower (experiments/BENCHMARKS.md)."""
    return mesh.devices.flat[0].platform != "cpu"


def compile_train_step(
    train_step: Callable, mesh, state_sharding: Any = None, *, donate: bool | None = None
) -> Callable:
    """jit with the batch split over every mesh axis and, when `donate` (default:
    `donate_by_default(mesh)`), the state donated: the caller must not reuse the state it passed.

    `state_sharding` (a pytree of shardings like the state, e.g. from the abstract state of
    `init_train_state`) defaults to replicated; the metrics come back replicated."""
    rep = parallel.replicated(mesh)
    state_sharding = rep if state_sharding is None else state_sharding
    donate = donate_by_default(mesh) if donate is None else donate
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
        out_shardings=(state_sharding, rep),
        donate_argnums=0 if donate else (),
    )


# ----------------------------------------------------------------------------- set-up


def _example_inputs(example_shape, num_classes):
    x = jnp.zeros((1, *example_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    y = jnp.zeros((1,), jnp.int32) if num_classes else None
    return x, t, y


def init_train_state(config, model, tx, example_shape, mesh, *, num_classes=0):
    """(abstract_state, init): shapes first (eval_shape), then shardings, then `init()`, a jitted
    init that creates the state where it lives. The abstract state's ShapeDtypeStructs carry the
    shardings: replicated, or split over the mesh's 'fsdp' axis (`parallel.state_shardings`)."""
    base = jax.random.PRNGKey(config.seed)
    init_key, state_key = jax.random.split(base)
    x, t, y = _example_inputs(example_shape, num_classes)
    history = None
    if config.diffusion.timestep_sampler == "importance":
        history = ts.init_loss_history(config.diffusion.num_timesteps)

    def init():
        params = model.init({"params": init_key, "dropout": init_key}, x, t, y)["params"]
        return create_train_state(params, tx, state_key, history)

    shapes = jax.eval_shape(init)
    shardings = parallel.state_shardings(shapes, mesh)
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return abstract, (lambda: jax.jit(init, out_shardings=shardings)())


def sample_grid(config, apply_fn, params, example_shape, num_classes, key, path: Path) -> Path:
    """Draws config.training.num_samples samples with the (EMA) params and saves them.

    Images go to a PNG grid; vector data to a .npy file. Class-conditional models cycle through
    the classes."""
    d = config.diffusion
    sched = schedules.make_schedule(
        d.beta_schedule, d.num_timesteps, respacing=config.training.sample_respacing or None
    )
    n = int(config.training.num_samples)
    y = jnp.arange(n, dtype=jnp.int32) % num_classes if num_classes else None
    x = sampling.sample_ancestral(
        apply_fn,
        params,
        sched,
        (n, *example_shape),
        key,
        y=y,
        mean_type=d.mean_type,
        var_type=d.var_type,
        clip_denoised=len(example_shape) == 3,
    )
    x = np.asarray(jax.device_get(x))
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(example_shape) == 3:
        images.save_grid(x, path.with_suffix(".png"))
        return path.with_suffix(".png")
    np.save(path.with_suffix(".npy"), x)
    return path.with_suffix(".npy")


# ----------------------------------------------------------------------------- the loop


def train(config, workdir: str | Path, *, eval_fn: Callable | None = None) -> TrainState:
    """Trains `config` in `workdir`, resuming from its latest checkpoint.

    Writes workdir/checkpoints (orbax: state, data iterator, config), workdir/metrics.jsonl,
    workdir/tensorboard and workdir/samples. `eval_fn(state, step) -> dict` runs every
    training.eval_every steps (its scalars are logged); by default it is what `config.eval` asks
    for (held-out bits/dim, FID of samples: `evaluate.make_train_eval_fn`). On SIGTERM the run
    saves a checkpoint at the current step and returns."""
    parallel.maybe_initialize_distributed()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tr, d = config.training, config.diffusion
    mesh = parallel.make_mesh(tr.get("fsdp", 1))
    parallel.check_global_batch(tr.batch_size, mesh)
    if tr.batch_size % tr.grad_accum_steps or (tr.batch_size // tr.grad_accum_steps) % mesh.size:
        raise ValueError(
            f"training.batch_size={tr.batch_size} must split into grad_accum_steps="
            f"{tr.grad_accum_steps} micro-batches that each split over {mesh.size} devices."
        )

    info = data.dataset_info(config.data)
    num_classes = int(config.model.num_classes)
    if num_classes and not config.data.use_labels:
        raise ValueError(
            "model.num_classes > 0 trains a class-conditional model: set data.use_labels."
        )
    schedule = schedules.make_schedule(d.beta_schedule, d.num_timesteps)
    model = create_model(config, info.shape)
    apply_fn = make_apply_fn(model)
    tx, lr_fn = make_optimizer(config.optim)
    abstract, init = init_train_state(config, model, tx, info.shape, mesh, num_classes=num_classes)
    state_sharding = jax.tree_util.tree_map(lambda a: a.sharding, abstract)
    step_fn = compile_train_step(
        make_train_step(apply_fn, tx, lr_fn, schedule, config, num_classes=num_classes),
        mesh,
        state_sharding,
    )
    main = parallel.is_main_process()
    if main:
        total = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(abstract))
        here = parallel.per_device_bytes(abstract)
        print(
            f"{jax.process_count()} process(es), {mesh.size} devices, mesh {dict(mesh.shape)}; "
            f"train state (params, EMA, optimizer) {here / 2**20:.1f} MiB per device of "
            f"{total / 2**20:.1f} MiB.",
            flush=True,
        )
    data_iter = data.make_train_iterator(
        config.data, global_batch_size=tr.batch_size, seed=config.seed
    )

    ckpt = loop.open_checkpointer(workdir, tr)
    state = loop.resume_or_init(
        ckpt,
        abstract,
        init,
        data_iter,
        mismatch=lambda saved: checkpoint.config_mismatch(saved, config),
    )
    if main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 10**9)
    if eval_fn is None and tr.eval_every and "eval" in config:
        from diffusion_jax.evaluation.evaluate import make_train_eval_fn

        eval_fn = make_train_eval_fn(config, apply_fn, workdir)

    def hook(step: int, state: TrainState, last: bool) -> dict[str, float]:
        if tr.sample_every and (step % tr.sample_every == 0 or last):
            # Every process takes part in gathering the (possibly sharded) EMA parameters; the
            # first draws and saves the grid on its own devices.
            params = parallel.to_local(state.ema_params)
            if main:
                path = workdir / "samples" / f"step_{step:08d}"
                key = jax.random.fold_in(sample_key, step)
                sample_grid(config, apply_fn, params, info.shape, num_classes, key, path)
        if eval_fn is not None and tr.eval_every and step % tr.eval_every == 0:
            return {f"eval/{k}": float(v) for k, v in eval_fn(state, step).items()}
        return {}

    return loop.run_loop(
        state=state,
        step_fn=step_fn,
        data_iter=data_iter,
        mesh=mesh,
        ckpt=ckpt,
        saved_config=config,
        training=tr,
        workdir=workdir,
        desc="training",
        hook=hook,
    )
