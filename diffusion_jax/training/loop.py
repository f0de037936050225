"""The host-side training loop shared by the diffusion model and the guidance classifier.

    ckpt = loop.open_checkpointer(workdir, config.training)
    state = loop.resume_or_init(ckpt, abstract, init, data_iter, mismatch=lambda saved: [...])
    state = loop.run_loop(state=state, step_fn=step_fn, data_iter=data_iter, mesh=mesh, ckpt=ckpt,
                          saved_config=config, training=config.training, workdir=workdir,
                          desc="training", hook=lambda step, state, last: {...})

`run_loop` feeds global batches to the compiled step, fetches the metrics every `log_every` steps
(to metrics.jsonl and TensorBoard, on the first host), stops with `NonFiniteError` naming the
first step whose loss or gradient was not finite, checkpoints every `checkpoint_every` steps, at
the end and on SIGTERM, and calls `hook(step, state, last)` after each step for samples or
evaluations (the scalars it returns are logged).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffusion_jax import checkpoint, parallel

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """The loss or gradient stopped being finite; the run stops and keeps its last checkpoint."""


class MetricsWriter:
    """Scalars to TensorBoard (tensorboardX) and to metrics.jsonl, on the first host only."""

    def __init__(self, workdir: Path):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / "tensorboard"))
        self.jsonl = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled or not scalars:
            return
        for k, v in scalars.items():
            self.tb.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()


def open_checkpointer(workdir: Path, training) -> checkpoint.Checkpointer:
    """The run's Checkpointer, with the retention and async settings of `config.training`."""
    return checkpoint.Checkpointer(
        workdir,
        save_every=training.checkpoint_every,
        keep=training.keep_checkpoints,
        keep_every=training.keep_every,
        async_save=training.async_checkpoints,
    )


def resume_or_init(
    ckpt: checkpoint.Checkpointer,
    abstract: Any,
    init: Callable[[], Any],
    data_iter: Any,
    *,
    mismatch: Callable[[dict], list[str]],
    what: str = "model",
) -> Any:
    """The latest checkpoint's state (and data position), or `init()` for a fresh workdir.

    `mismatch(saved_config_dict)` lists the settings that make the saved run a different one; any
    makes this raise instead of resuming. `ckpt` is closed when this raises."""
    try:
        if ckpt.latest_step() is None:
            return init()
        differences = mismatch(ckpt.restore_config())
        if differences:
            raise checkpoint.CheckpointError(
                f"{ckpt.directory.parent} holds a run of a different {what} "
                f"({'; '.join(differences)}): use a fresh --workdir, or the config that run was "
                "started with."
            )
        state, _ = ckpt.restore(abstract, data_iter)
    except BaseException:
        ckpt.close()
        raise
    log.info("Resumed the %s from step %d", what, int(state.step))
    if jax.process_index() == 0:
        print(f"Resumed the {what} from step {int(state.step)} ({ckpt.directory}).", flush=True)
    return state


def run_loop(
    *,
    state: Any,
    step_fn: Callable,
    data_iter: Any,
    mesh,
    ckpt: checkpoint.Checkpointer,
    saved_config: Any,
    training,
    workdir: Path,
    desc: str,
    hook: Callable[[int, Any, bool], dict | None] | None = None,
) -> Any:
    """Runs `step_fn` from `state.step` to `training.num_steps`; returns the final state (or the
    state at which SIGTERM arrived, after checkpointing it). Closes `ckpt` on the way out."""
    tr = training
    metrics_out = MetricsWriter(workdir)
    start = int(state.step)
    pending: list[tuple[int, dict]] = []
    clock = {"time": time.time(), "step": start}

    def flush(step: int) -> None:
        """Fetches the metrics of the steps since the last flush; stops on a non-finite one."""
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        steps = [s for s, _ in pending]
        pending.clear()
        if tr.on_nonfinite == "error":
            for s, m in zip(steps, fetched, strict=True):
                if not m["finite"]:
                    raise NonFiniteError(
                        f"The loss or gradient was not finite at step {s} (loss={m['loss']}, "
                        f"grad_norm={m['grad_norm']}). The update was not applied and no "
                        f"checkpoint after step {ckpt.latest_step()} was written. Lower "
                        "optim.learning_rate, check the data, or set "
                        "training.on_nonfinite='skip'."
                    )
        now = time.time()
        rate = (step - clock["step"]) / max(now - clock["time"], 1e-9)
        clock.update(time=now, step=step)
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1] if k != "finite"}
        scalars.update(
            steps_per_sec=rate,
            images_per_sec=rate * tr.batch_size,
            skipped=float(jax.device_get(state.skipped)),
        )
        metrics_out.write(step, scalars)
        postfix = {"loss": f"{scalars['loss']:.4f}", "steps_per_s": f"{rate:.2f}"}
        if "accuracy" in scalars:
            postfix["acc"] = f"{scalars['accuracy']:.2f}"
        bar.set_postfix(**postfix)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=tr.num_steps,
        initial=start,
        disable=jax.process_index() != 0,
        desc=f"{desc} {workdir.name}",
        dynamic_ncols=True,
    )
    try:
        with checkpoint.PreemptionGuard() as guard:
            for step in range(start + 1, tr.num_steps + 1):
                batch = parallel.global_batch(mesh, next(data_iter))
                state, metrics = step_fn(state, batch)
                pending.append((step, metrics))
                bar.update(1)
                last = step == tr.num_steps
                if step % tr.log_every == 0:
                    flush(step)
                if hook is not None:
                    metrics_out.write(step, hook(step, state, last) or {})
                stop = guard.should_stop(step)
                if stop or last or step % tr.checkpoint_every == 0:
                    flush(step)  # raises before a save if any step since the last was non-finite
                    ckpt.save(step, state, saved_config, data_iter, force=True)
                if stop:
                    log.warning("SIGTERM: saved a checkpoint at step %d and stopped.", step)
                    print(f"Preempted: checkpoint saved at step {step}.", flush=True)
                    break
    finally:
        bar.close()
        ckpt.close()
        metrics_out.close()
    return state
