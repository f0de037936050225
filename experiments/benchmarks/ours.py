"""The diffusion_jax side of the suite: the library's own train step, forward pass, samplers and
FID Inception network, compiled ahead of time and timed on synthetic data.

    config, shape = ours.load_model_config("cifar10")          # a preset, or a .py file
    ours.bench_train(config, shape, batch=8, steps=5, warmup=1)  # a dict of measurements
    ours.bench_train(config, shape, batch=8, steps=5, warmup=1, scan=4)  # 4 steps per dispatch
    ours.bench_forward(config, shape, batch=8, steps=5, warmup=1)
    ours.bench_sample(config, shape, batch=8, sampler="ddim", sample_steps=10, steps=3, warmup=1)
    ours.bench_inception(batch=8, image_shape=(32, 32, 3), steps=3, warmup=1)

The train step is `step.make_train_step` compiled by `step.compile_train_step` (state
replicated, donated on accelerators, batch split over every device), exactly as `diffusion-jax
train` runs it.
Each result holds the compile times, the step-time statistics, images/s, XLA's FLOPs per step
(cost analysis of the compiled executable), an independent count of the matmul and convolution
FLOPs from the jaxpr, the achieved FLOP/s and XLA's buffer sizes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from diffusion_jax import configs, parallel, setup
from diffusion_jax.core import schedules
from diffusion_jax.data import pipeline as data
from diffusion_jax.models import count_params, make_apply_fn
from diffusion_jax.sampling import samplers as sampling
from diffusion_jax.training import state as state_lib
from diffusion_jax.training import step as step_lib
from experiments.benchmarks import measure


def load_model_config(name: str):
    """(config, image shape) of a preset (cifar10, celebahq256, lsun_church, digits, tiny, ...)
    or a config file, without reading (or having prepared) the dataset."""
    try:
        config = configs.get_config(name)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return config, tuple(data.example_shape(config.data))


def bench_parts(config, shape, options: dict[str, Any] | None = None) -> setup.Parts:
    """`setup.diffusion_parts(config, shape)` with any UNet attribute replaced by `options`."""
    parts = setup.diffusion_parts(config, shape)
    if not options:
        return parts
    model = parts.model.clone(**options)
    return dataclasses.replace(parts, model=model, apply_fn=make_apply_fn(model))


def build_model(config, shape, options: dict[str, Any] | None = None):
    """The network of `bench_parts`."""
    return bench_parts(config, shape, options).model


def model_attributes(model) -> dict[str, Any]:
    """The U-Net's constructor attributes as plain JSON values (for the PyTorch peer)."""
    names = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "num_classes",
             "learned_variance", "out_channels", "resamp_with_conv")  # fmt: skip
    out = {}
    for name in names:
        value = getattr(model, name, None)
        out[name] = list(value) if isinstance(value, tuple | list) else value
    return out


def _images(batch: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, *shape)).astype(np.float32)


@dataclasses.dataclass
class Prepared:
    """A compiled benchmark ready to be timed: `call()` runs `k` steps on `batch` images."""

    what: str
    call: Callable[[], Any]
    compiled: Any
    batch: int
    dtype: str
    k: int = 1
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    flops_jaxpr: float | None = None
    extra: Callable[[], dict[str, Any]] | None = None  # fields known after timing


def time_prepared(p: Prepared, *, steps: int, warmup: int) -> dict[str, Any]:
    """Per-step statistics of `steps` timed calls of `p` after `warmup` discarded ones."""
    return measure.per_step(measure.time_calls(p.call, steps=steps, warmup=warmup), p.k)


def finish(p: Prepared, step: dict[str, Any]) -> dict[str, Any]:
    """The result of `p` with per-step statistics `step`: rates, FLOPs, utilisation, memory."""
    step_s = step["median_s"]
    flops = measure.cost_flops(p.compiled)
    flops = None if flops is None else flops / p.k
    device = jax.devices()[0]
    peak = measure.peak_flops(device, p.dtype)
    achieved = measure.rate(flops, step_s)
    result = {"what": p.what, **p.info, "step": step}
    result.update(
        images_per_s=p.batch / step_s,
        flops_per_step_xla=flops,
        flops_per_step_jaxpr=p.flops_jaxpr,
        achieved_flops_per_s=achieved,
        peak_flops_per_s=peak["flops_per_s"],
        peak_source=peak["source"],
        utilisation=(achieved / peak["flops_per_s"]) if achieved and peak["flops_per_s"] else None,
        xla_memory=measure.xla_memory(p.compiled),
        peak_memory=measure.peak_memory(device),
    )
    if p.extra:
        result.update(p.extra())
    return result


def run_prepared(p: Prepared, *, steps: int, warmup: int) -> dict[str, Any]:
    first = measure.time_calls(p.call, steps=1, warmup=0)["median_s"]
    p.info["first_call_s"] = first
    return finish(p, time_prepared(p, steps=steps, warmup=warmup))


def _dtype_name(config) -> str:
    return "bfloat16" if config.model.dtype == "bfloat16" else "float32"


def multi_step(train_step, k: int):
    """k train steps in one dispatch: `lax.scan` over batches [k, B, ...]; the metrics of the
    last step. The same updates as k calls of `train_step`."""

    def run(state, batches):
        state, metrics = jax.lax.scan(train_step, state, batches)
        return state, jax.tree_util.tree_map(lambda m: m[-1], metrics)

    return run


def train_step_setup(config, shape, batch: int, options: dict[str, Any] | None = None):
    """The library's train step for `config` at global `batch` on every local device, as
    `diffusion-jax train` builds it: (mesh, model, step_fn (not yet jitted), abstract state,
    init() -> state)."""
    config = config.copy_and_resolve_references()
    config.training.batch_size = batch
    mesh = parallel.data_mesh()
    parts = bench_parts(config, shape, options)
    abstract, init = state_lib.init_state(parts, mesh)
    return mesh, parts.model, step_lib.make_train_step(parts), abstract, init


def prepare_train(
    config,
    shape,
    batch: int,
    *,
    scan: int = 1,
    donate: bool | None = None,
    options: dict[str, Any] | None = None,
) -> Prepared:
    """The training step on `batch` synthetic images, compiled."""
    mesh, model, step_fn, _, init = train_step_setup(config, shape, batch, options)
    state = init()
    rep = parallel.replicated(mesh)
    batch_sharding = parallel.batch_sharding(mesh)
    images = _images(batch, shape)
    donate = step_lib.donate_by_default(mesh) if donate is None else donate
    if scan == 1:
        data = parallel.global_batch(mesh, {"image": images})
        jitted = step_lib.compile_train_step(step_fn, mesh, donate=donate)  # the library's own
    else:
        stacked = np.stack([_images(batch, shape, seed=i) for i in range(scan)])
        scan_sharding = NamedSharding(mesh, PartitionSpec(None, *batch_sharding.spec))
        data = {"image": jax.device_put(stacked, scan_sharding)}
        jitted = jax.jit(
            multi_step(step_fn, scan),
            in_shardings=(rep, scan_sharding),
            out_shardings=(rep, rep),
            donate_argnums=0 if donate else (),
        )
    one_batch = {"image": jnp.asarray(images)}
    flops_jaxpr = measure.jaxpr_flops(step_fn, state, one_batch)
    compiled, compile_times = measure.compile_timed(jitted, state, data)

    holder = {"state": state}
    losses = []

    def call():
        holder["state"], metrics = compiled(holder["state"], data)
        losses.append(metrics["loss"])
        return holder["state"], metrics

    def extra():
        values = [float(v) for v in jax.device_get(losses)]
        return {
            "loss_first": values[0],
            "loss_last": values[-1],
            "all_finite": bool(np.all(np.isfinite(values))),
        }

    info = {
        "params": count_params(model, shape),
        "compile": compile_times,
        "steps_per_dispatch": scan,
        "donated": donate,
    }
    return Prepared("train", call, compiled, batch, _dtype_name(config), scan, info, flops_jaxpr,
                    extra)  # fmt: skip


def prepare_forward(config, shape, batch: int, *, options: dict | None = None) -> Prepared:
    """The network alone (eval mode: no dropout) on `batch` images at spread-out timesteps."""
    parts = bench_parts(config, shape, options)
    model, apply_fn = parts.model, parts.apply_fn
    x = jnp.asarray(_images(batch, shape))
    t = jnp.arange(batch, dtype=jnp.int32) * (config.diffusion.num_timesteps // max(batch, 1))
    params = jax.jit(parts.init_params)(jax.random.key(0))
    flops_jaxpr = measure.jaxpr_flops(apply_fn, params, x, t)
    compiled, compile_times = measure.compile_timed(jax.jit(apply_fn), params, x, t)

    def extra():
        return {"all_finite": bool(np.all(np.isfinite(np.asarray(compiled(params, x, t)))))}

    info = {"params": count_params(model, shape), "compile": compile_times}
    return Prepared("forward", lambda: compiled(params, x, t), compiled, batch,
                    _dtype_name(config), 1, info, flops_jaxpr, extra)  # fmt: skip


def bench_train(config, shape, batch: int, *, steps: int, warmup: int, **kw) -> dict[str, Any]:
    """`prepare_train` (scan, donate, options), then `steps` timed calls after `warmup`."""
    return run_prepared(prepare_train(config, shape, batch, **kw), steps=steps, warmup=warmup)


def bench_forward(config, shape, batch: int, *, steps: int, warmup: int, **kw) -> dict[str, Any]:
    return run_prepared(prepare_forward(config, shape, batch, **kw), steps=steps, warmup=warmup)


def bench_sample(
    config,
    shape,
    batch: int,
    *,
    sampler: str,
    sample_steps: int,
    steps: int,
    warmup: int,
    options: dict | None = None,
) -> dict[str, Any]:
    """One compiled sampling chain (`sampling.sample_ancestral` / `sample_ddim`, a
    `lax.fori_loop`) of `sample_steps` respaced steps; per-step time = chain time / steps."""
    parts = bench_parts(config, shape, options)
    apply_fn = parts.apply_fn
    d = config.diffusion
    sched = schedules.make_schedule(d.beta_schedule, d.num_timesteps, respacing=str(sample_steps))
    params = jax.jit(parts.init_params)(jax.random.key(0))
    fn = {"ancestral": sampling.sample_ancestral, "ddim": sampling.sample_ddim}[sampler]
    kw = dict(denoiser=sampling.Denoiser(d.mean_type, d.var_type, clip_denoised=len(shape) == 3))
    key = jax.random.key(1)
    full_shape = (batch, *shape)
    compiled, compile_times = measure.compile_timed(
        fn, apply_fn, params, sched, full_shape, key, **kw
    )
    stats = measure.time_calls(lambda: compiled(params, sched, key), steps=steps, warmup=warmup)
    per = measure.per_step(stats, sample_steps)
    out = np.asarray(compiled(params, sched, key))
    flops = measure.cost_flops(compiled)  # the loop body once: about one step's FLOPs
    achieved = measure.rate(flops, per["median_s"])
    return {
        "what": f"sample_{sampler}",
        "sample_steps": sample_steps,
        "compile": compile_times,
        "chain": stats,
        "step": per,
        "images_per_s": batch / stats["median_s"],
        "flops_per_step_xla": flops,
        "achieved_flops_per_s": achieved,
        "all_finite": bool(np.all(np.isfinite(out))),
        "peak_memory": measure.peak_memory(),
    }


def bench_inception(
    batch: int, image_shape=(32, 32, 3), *, steps: int, warmup: int
) -> dict[str, Any]:
    """FID's Inception-v3 (random weights: the time does not depend on them) on `batch` uint8
    images of `image_shape`, resized to 299x299 inside the network as for FID."""
    from diffusion_jax.evaluation.inception import FIDInceptionV3

    if len(image_shape) != 3 or image_shape[-1] != 3:
        image_shape = (32, 32, 3)
    module = FIDInceptionV3()
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, *image_shape), dtype=np.uint8))
    variables = jax.jit(module.init)(jax.random.key(0), images[:1])
    flops_jaxpr = measure.jaxpr_flops(module.apply, variables, images)
    compiled, compile_times = measure.compile_timed(jax.jit(module.apply), variables, images)
    info = {"input_shape": list(image_shape), "compile": compile_times}
    p = Prepared("inception", lambda: compiled(variables, images), compiled, batch, "float32", 1,
                 info, flops_jaxpr)  # fmt: skip
    return run_prepared(p, steps=steps, warmup=warmup)
