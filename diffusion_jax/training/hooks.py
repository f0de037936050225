"""What a training run does besides stepping: sample grids and evaluations every few steps.

    hook = hooks.training_hook(parts, workdir)       # a loop.Hook, for loop.fit
    if hook.due(step, last):
        extra = hook.run(step, state, last)          # {"eval/fid": ..., ...} or {}

Grids (training.sample_every): ancestral samples of the EMA parameters, respaced to
training.sample_respacing, as workdir/samples/step_<N>.png (.npy for vector data). Evaluations
(training.eval_every): what `config.eval` asks for, logged as eval/*.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parallel
from diffusion_jax.core import schedules
from diffusion_jax.data import images
from diffusion_jax.evaluation import bpd, evaluate
from diffusion_jax.evaluation.features import get_extractor
from diffusion_jax.sampling import generate, samplers
from diffusion_jax.sampling.runs import Run
from diffusion_jax.training import loop


def training_hook(parts: Any, workdir: Path, eval_fn: Callable | None = None) -> loop.Hook:
    """The hook of a diffusion run: grids every training.sample_every steps (and at the end),
    and `eval_fn(state, step)` (default: `make_eval_fn`) every training.eval_every steps."""
    config = parts.config
    tr = config.training
    if eval_fn is None and tr.eval_every:
        eval_fn = make_eval_fn(parts, workdir)
    sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 10**9)

    def grid_due(step: int, last: bool) -> bool:
        return bool(tr.sample_every) and (step % tr.sample_every == 0 or last)

    def eval_due(step: int) -> bool:
        return eval_fn is not None and bool(tr.eval_every) and step % tr.eval_every == 0

    def run(step: int, state: Any, last: bool) -> dict[str, float]:
        if grid_due(step, last):
            # Every process takes part in gathering the (possibly sharded) EMA parameters; the
            # first draws and saves the grid on its own devices.
            params = parallel.to_local(state.ema_params)
            if parallel.is_main_process():
                path = workdir / "samples" / f"step_{step:08d}"
                sample_grid(parts, params, jax.random.fold_in(sample_key, step), path)
        if eval_due(step):
            return {f"eval/{k}": float(v) for k, v in eval_fn(state, step).items()}
        return {}

    return loop.Hook(due=lambda step, last: grid_due(step, last) or eval_due(step), run=run)


def sample_grid(parts: Any, params: Any, key: jax.Array, path: Path) -> Path:
    """Draws training.num_samples samples with `params` and saves them: images as a PNG grid,
    vector data as .npy. Class-conditional models cycle through the classes."""
    config, shape, num_classes = parts.config, parts.example_shape, parts.num_classes
    d = config.diffusion
    sched = schedules.make_schedule(
        d.beta_schedule, d.num_timesteps, respacing=config.training.sample_respacing or None
    )
    n = int(config.training.num_samples)
    y = jnp.arange(n, dtype=jnp.int32) % num_classes if num_classes else None
    x = samplers.sample_ancestral(
        parts.apply_fn,
        params,
        sched,
        (n, *shape),
        key,
        y=y,
        denoiser=samplers.Denoiser(d.mean_type, d.var_type, clip_denoised=len(shape) == 3),
    )
    x = np.asarray(jax.device_get(x))
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(shape) == 3:
        return images.save_grid(x, path.with_suffix(".png"))
    np.save(path.with_suffix(".npy"), x)
    return path.with_suffix(".npy")


def make_eval_fn(parts: Any, workdir: Path) -> Callable | None:
    """`eval_fn(state, step) -> dict` from `config.eval`: the bound in bits/dim on
    `eval.bpd_examples` held-out examples, and FID (+ the other sample metrics) of
    `eval.num_samples` samples (`eval.sampler`, `eval.steps` respaced steps) under
    `eval.features`. None when `config.eval` asks for nothing."""
    config = parts.config
    ev = config.eval
    if not (ev.bpd_examples or ev.num_samples):
        return None
    scorer = _SampleScorer(config, workdir) if ev.num_samples else None

    def eval_fn(state, step: int) -> dict[str, float]:
        # Each process evaluates on its own devices, with a full copy of the EMA parameters.
        params = parallel.to_local(state.ema_params)
        run = Run(config, parts.apply_fn, params, parts.example_shape, int(step), True)
        out: dict[str, float] = {}
        if ev.bpd_examples:
            result = bpd.dataset_bpd(run, batch_size=ev.batch_size, max_examples=ev.bpd_examples)
            out.update({"bpd": result["bpd"], "prior_bpd": result["prior_bpd"]})
        if scorer is not None:
            out.update(scorer(run, step))
        if parallel.is_main_process():
            (workdir / "eval").mkdir(parents=True, exist_ok=True)
            with open(workdir / "eval" / "train_eval.jsonl", "a") as f:
                f.write(json.dumps({"step": int(step), **out}) + "\n")
        return out

    return eval_fn


class _SampleScorer:
    """Sample metrics of a run during training; the extractor and the reference statistics are
    made on first use and kept (the reference cached in workdir/eval/ unless eval.reference)."""

    def __init__(self, config: Any, workdir: Path):
        self.config, self.workdir = config, workdir
        self.extractor = self.reference = None

    def _prepare(self) -> None:
        ev = self.config.eval
        self.extractor = get_extractor(ev.features, workdir=ev.feature_workdir)
        self.reference = (
            evaluate.load_reference(ev.reference)
            if ev.reference
            else evaluate.cached_reference(self.extractor, self.config.data, self.workdir)
        )

    def __call__(self, run: Run, step: int) -> dict[str, float]:
        if self.extractor is None:
            self._prepare()
        ev = self.config.eval
        samples, labels = generate.generate(
            run,
            num=ev.num_samples,
            sampler=ev.sampler,
            steps=ev.steps,
            batch_size=ev.batch_size,
            seed=self.config.seed + int(step),
        )
        scores = evaluate.sample_metrics(
            samples,
            self.extractor,
            self.reference,
            labels=labels,
            kid_subset_size=min(1000, ev.num_samples),
        )
        return {k: v for k, v in scores.items() if k != "num_samples"}
