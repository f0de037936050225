"""N samples of a trained run in chunks sharded over every device, to a uint8 .npz and a PNG grid.

    run = runs.load_run("runs/digits_cond")                      # config + EMA parameters
    images, labels = generate.generate(run, num=1000, sampler="ddim", steps=50, cfg_scale=1.0)
    generate.save_samples(images, labels, "samples.npz", grid="samples.png")

`diffusion-jax sample --workdir runs/X --num 50000 --sampler ddim --steps 50 --out samples.npz`
(or `--sampler dpmpp_2m --steps 15 --spacing trailing`: `FAST_SAMPLERS`) does the same
(launched on every host of a multi-process job; only process 0 writes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parallel
from diffusion_jax.core import schedules, spacing
from diffusion_jax.data import images
from diffusion_jax.sampling import karras, solvers
from diffusion_jax.sampling import samplers as sampling
from diffusion_jax.sampling.runs import Run

SPACINGS = {"uniform": "{n}", "ddim": "ddim{n}", "quad": "ddimq{n}"}
# The fast solvers by name: (function, its settings). They take `steps` solver steps on the full
# schedule, spaced by a name of `core.spacing.SPACINGS` (Euler/Heun: linspace, leading, trailing,
# karras).
FAST_SAMPLERS = {
    "dpmpp_2m": (solvers.sample_dpmpp, {"order": 2}),
    "dpmpp_3m": (solvers.sample_dpmpp, {"order": 3}),
    "dpmpp_2s": (solvers.sample_dpmpp, {"order": 2, "method": "singlestep"}),
    "unipc_2": (solvers.sample_unipc, {"order": 2}),
    "unipc_3": (solvers.sample_unipc, {"order": 3}),
    "euler": (karras.sample_euler, {}),
    "heun": (karras.sample_heun, {}),
}
SAMPLERS = ("ancestral", "ddim", *FAST_SAMPLERS)


def check_sampler(sampler: str, steps: int, spacing_name: str) -> None:
    """A ValueError naming what fits when `sampler`, `steps` and `spacing_name` do not go
    together: ancestral/DDIM take SPACINGS (0 steps: all T), the fast solvers steps >= 1 and the
    names of `core.spacing.SPACINGS` (Euler/Heun: not logsnr or quadratic)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}.")
    if sampler in FAST_SAMPLERS:
        names = spacing.SPACINGS
        if FAST_SAMPLERS[sampler][0] in (karras.sample_euler, karras.sample_heun):
            names = (*karras.SPACINGS, "karras")
        if steps < 1:
            raise ValueError(f"sampler {sampler!r} needs steps >= 1, got {steps}.")
    else:
        names = tuple(SPACINGS)
    if spacing_name not in names:
        raise ValueError(
            f"sampler {sampler!r} takes the spacings {', '.join(names)}, got {spacing_name!r}."
        )


def sampling_schedule(config, steps: int = 0, spacing: str = "uniform") -> schedules.Schedule:
    """The run's schedule, respaced to `steps` steps (0: all of them) with `spacing`: "uniform"
    (evenly spaced, both ends kept), "ddim" (integer stride from 0) or "quad" (DDIM's quadratic)."""
    d = config.diffusion
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {sorted(SPACINGS)}, got {spacing!r}.")
    respacing = None if not steps or steps == d.num_timesteps else SPACINGS[spacing].format(n=steps)
    return schedules.make_schedule(d.beta_schedule, d.num_timesteps, respacing=respacing)


def _labels(run: Run, num: int, classes: Sequence[int] | None, unconditional: bool, guided: bool):
    if not run.num_classes:
        if unconditional or (classes and not guided):
            raise ValueError(
                "This run is unconditional: drop --classes / --unconditional (or add a "
                "classifier to guide it towards --classes)."
            )
        if guided:
            if not classes:
                raise ValueError("Classifier guidance of an unconditional run needs --classes.")
            return np.asarray(classes, np.int32)[np.arange(num) % len(classes)]
        return None
    if unconditional:
        return np.full(num, run.num_classes, np.int32)  # the null label
    pool = np.asarray(classes if classes else range(run.num_classes), np.int32)
    if pool.min() < 0 or pool.max() >= run.num_classes:
        raise ValueError(f"Classes must lie in [0, {run.num_classes}), got {pool.tolist()}.")
    return pool[np.arange(num) % len(pool)]


def generate(
    run: Run,
    *,
    num: int,
    sampler: str = "ancestral",
    steps: int = 0,
    spacing: str = "uniform",
    eta: float = 0.0,
    cfg_scale: float | None = None,
    classes: Sequence[int] | None = None,
    unconditional: bool = False,
    cond_fn: Callable | None = None,
    classifier_scale: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`num` samples of `run` (images as uint8 [N, H, W, C], vector data as float32) and labels.
    Chunks of `batch_size` (rounded up to a multiple of the local device count) are sharded over a
    process's devices; chunk i uses the key fold_in(PRNGKey(seed), i), so a seed reproduces a set
    whatever the number of processes (if the per-process device count divides the batch size).
    Process p draws the p-th contiguous block of chunks; all get all the samples (gathered once)."""
    check_sampler(sampler, steps, spacing)
    if cfg_scale is not None and not run.num_classes:
        raise ValueError(
            "Classifier-free guidance needs a class-conditional run (model.num_classes)."
        )
    labels = _labels(run, num, classes, unconditional, guided=cond_fn is not None)
    guidance = sampling.Guidance(cfg_scale, run.num_classes or None, cond_fn, classifier_scale)
    mesh = parallel.local_mesh()
    chunk = -(-min(batch_size, num) // mesh.size) * mesh.size
    if sampler in FAST_SAMPLERS:  # they space the full schedule themselves
        sched, how = sampling_schedule(run.config), {"steps": steps, "spacing": spacing}
    else:
        sched, how = sampling_schedule(run.config, steps, spacing), {"eta": eta}
    draw = _chain(run, sched, sampler, how, guidance, (chunk, *run.shape), mesh, labels)
    params = parallel.to_local(run.params, mesh)
    from tqdm.auto import tqdm

    out, base = [], jax.random.PRNGKey(seed)
    mine = np.array_split(np.arange(-(-num // chunk)), jax.process_count())[jax.process_index()]
    show = progress and parallel.is_main_process()
    for i in tqdm(mine.tolist(), desc=f"sampling ({sampler})", disable=not show):
        y = None
        if labels is not None:
            y = jnp.asarray(np.resize(labels[i * chunk : (i + 1) * chunk], chunk))
        out.append(np.asarray(jax.device_get(draw(params, jax.random.fold_in(base, i), y))))
    local = np.concatenate(out) if out else np.zeros((0, *run.shape), np.float32)
    samples = parallel.allgather_rows(local)[:num]
    return (images.to_uint8(samples) if len(run.shape) == 3 else samples), labels


def _chain(run: Run, sched, sampler: str, how: dict, guidance, shape, mesh, labels) -> Callable:
    """`draw(params, key, y) -> samples [shape]`: one jitted chain of `sampler` with the settings
    `how` (eta; steps and spacing), its output split over `mesh`. Images are clipped to [-1, 1]
    at each step; other data are not."""
    d = run.config.diffusion
    denoiser = sampling.Denoiser(d.mean_type, d.var_type, clip_denoised=len(run.shape) == 3)
    apply_fn = run.apply_fn
    if labels is not None and not run.num_classes:
        # The labels are for the guiding classifier; the unconditional network takes none.
        def apply_fn(params, x_t, t, y=None, **kwargs):
            return run.apply_fn(params, x_t, t, None, **kwargs)

    kw = dict(denoiser=denoiser, guidance=guidance)
    if sampler in FAST_SAMPLERS:
        sample_fn, settings = FAST_SAMPLERS[sampler]
        kw |= settings | how
        if sample_fn in (karras.sample_euler, karras.sample_heun) and how["spacing"] == "karras":
            kw |= {"spacing": "linspace", "use_karras_sigmas": True}
    else:
        sample_fn = sampling.sample_ddim if sampler == "ddim" else sampling.sample_ancestral
        kw |= how if sampler == "ddim" else {}

    @jax.jit
    def draw(params, key, y):
        x = sample_fn(apply_fn, params, sched, shape, key, y=y, **kw)
        return jax.lax.with_sharding_constraint(x, parallel.batch_sharding(mesh))

    return draw


def save_samples(samples, labels, out: str | Path, grid: str | Path | None = None) -> Path:
    """Writes `out` (.npz as FID tools read it: arr_0 = the samples; labels if any) and a grid."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": samples} | ({"labels": labels} if labels is not None else {})
    partial = out.with_name(f".{out.name}.partial.npz")  # a failed write leaves `out` as it was
    np.savez(partial, **arrays)
    os.replace(partial, out)
    if grid is not None and samples.ndim == 4:
        images.save_grid(samples[:64], grid)
    return out
