"""The one host-side training driver, shared by the diffusion model and the guidance classifier.

    state = loop.fit(parts, mesh, workdir, make_step=step.make_train_step,
                     saved_config=config, rules=resume.ResumeRules(), hook=hook)

`fit` locks the workdir (`lock.WorkdirLock`: a second run on it is refused), resumes from its
latest checkpoint (`resume.resume_or_init`: a changed model is refused, a changed data or batch
too unless allowed), compiles the step and runs `run_loop`: metrics every `log_every` steps
(metrics.jsonl, TensorBoard; `NonFiniteError` names the first non-finite step, or the end of
`max_consecutive_skips` skipped ones), checkpoints every `checkpoint_every` steps, at the end, on
SIGTERM and Ctrl-C (a second Ctrl-C stops at once), and before each step's hook (sample grids,
evaluations: a failing hook costs no checkpoint). Every run ends with one summary line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffusion_jax import checkpoint, parallel
from diffusion_jax.data import pipeline as data
from diffusion_jax.errors import UserError
from diffusion_jax.training.lock import WorkdirLock
from diffusion_jax.training.preemption import PreemptionGuard
from diffusion_jax.training.resume import ResumeRules, as_dict, resume_or_init
from diffusion_jax.training.state import init_state
from diffusion_jax.training.step import compile_train_step

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Hook:
    """What the loop runs besides stepping: `run(step, state, last) -> {name: scalar} | None`
    after the steps where `due(step, last)`, once that step's checkpoint is saved."""

    due: Callable[[int, bool], bool]
    run: Callable[[int, Any, bool], dict | None]


class NonFiniteError(UserError, FloatingPointError):
    """The loss or gradient stopped being finite; the run stops and keeps its last checkpoint."""


def fit(
    parts: Any,
    mesh: jax.sharding.Mesh,
    workdir: Path,
    *,
    make_step: Callable[[Any], Callable],
    saved_config: Any,
    rules: ResumeRules | None = None,
    allow_changes: bool = False,
    hook: Hook | None = None,
) -> Any:
    """Trains `parts` (`setup.Parts`) on `mesh` in `workdir`, from its latest checkpoint if it
    has one, to `training.num_steps`; returns the final state. `saved_config` (a ConfigDict or a
    dict) is checkpointed, written to workdir/config.json and compared with the checkpoint's by
    `rules` (`allow_changes`: accept other data, batch or seed)."""
    tr, rules = parts.config.training, rules or ResumeRules()
    saved_config = as_dict(saved_config)
    abstract, init = init_state(parts, mesh)
    with WorkdirLock(workdir, command=f"train ({rules.what})"):
        data_iter = data.make_train_iterator(
            parts.config.data, global_batch_size=tr.batch_size, seed=parts.config.seed
        )
        ckpt = open_checkpointer(workdir, tr)
        state = resume_or_init(
            ckpt, abstract, init, data_iter, config=saved_config, rules=rules,
            allow_changes=allow_changes, workdir=workdir,
        )  # fmt: skip
        if int(state.step) >= tr.num_steps:
            ckpt.close()
            if parallel.is_main_process():
                print(
                    f"{workdir} is already at step {int(state.step)}, training.num_steps is "
                    f"{tr.num_steps}: nothing to do (raise --config.training.num_steps to "
                    "train further).",
                    flush=True,
                )
            return state
        try:
            sharding = jax.tree.map(lambda a: a.sharding, abstract)
            step_fn = compile_train_step(make_step(parts), mesh, sharding)
            _print_layout(abstract, mesh)
            if parallel.is_main_process():
                (workdir / "config.json").write_text(json.dumps(saved_config, indent=2))
        except BaseException:
            ckpt.close()
            raise
        return run_loop(
            state=state, step_fn=step_fn, data_iter=data_iter, mesh=mesh, ckpt=ckpt,
            saved_config=saved_config, training=tr, workdir=workdir, hook=hook,
            desc="training" if rules.what == "model" else rules.what,
        )  # fmt: skip


def _print_layout(abstract: Any, mesh) -> None:
    if parallel.is_main_process():
        total = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(abstract))
        here = parallel.per_device_bytes(abstract)
        print(
            f"{jax.process_count()} process(es), {mesh.size} devices, mesh {dict(mesh.shape)}; "
            f"train state (params, EMA, optimizer) {here / 2**20:.1f} MiB per device of "
            f"{total / 2**20:.1f} MiB.",
            flush=True,
        )


def open_checkpointer(workdir: Path, training) -> checkpoint.Checkpointer:
    """The run's Checkpointer, with the retention and async settings of `config.training`."""
    return checkpoint.Checkpointer(
        workdir,
        save_every=training.checkpoint_every,
        keep=training.keep_checkpoints,
        keep_every=training.keep_every,
        async_save=training.async_checkpoints,
    )


class MetricsLog:
    """Step metrics fetched in groups: every `log_every` steps they are copied to the host, checked
    for a non-finite step, averaged, and written to TensorBoard (tensorboardX) and metrics.jsonl
    on the first host, with the progress bar's postfix."""

    def __init__(self, workdir: Path, training, bar, ckpt: checkpoint.Checkpointer):
        self.training, self.bar, self.ckpt = training, bar, ckpt
        self.pending: list[tuple[int, dict]] = []
        self.skips_in_a_row = 0
        self.clock = (time.time(), int(bar.n))
        self.enabled = jax.process_index() == 0
        if self.enabled:
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

    def flush(self, step: int, state: Any) -> None:
        """Fetches the metrics of the steps since the last flush; stops on a non-finite one."""
        if not self.pending:
            return
        fetched = jax.device_get([m for _, m in self.pending])
        steps = [s for s, _ in self.pending]
        self.pending.clear()
        self._check_finite(steps, [bool(m["finite"]) for m in fetched], fetched)
        now = time.time()
        rate = (step - self.clock[1]) / max(now - self.clock[0], 1e-9)
        self.clock = (now, step)
        kept = [m for m in fetched if m["finite"]] or fetched  # skipped steps' NaNs left out
        scalars = {k: float(np.mean([m[k] for m in kept])) for k in kept[-1] if k != "finite"}
        scalars.update(
            steps_per_sec=rate,
            images_per_sec=rate * self.training.batch_size,
            skipped=float(jax.device_get(state.skipped)),
        )
        self.write(step, scalars)
        postfix = {"loss": f"{scalars['loss']:.4f}", "steps_per_s": f"{rate:.2f}"}
        if "accuracy" in scalars:
            postfix["acc"] = f"{scalars['accuracy']:.2f}"
        self.bar.set_postfix(**postfix)

    def _check_finite(self, steps: list[int], finite: list[bool], fetched: list[dict]) -> None:
        """Stops at the first non-finite step (on_nonfinite="error"), or when skipped steps
        reach training.max_consecutive_skips in a row; warns about the skipped ones."""
        tr, latest = self.training, self.ckpt.latest_step()
        limit = int(tr.get("max_consecutive_skips", 20))
        for s, ok, m in zip(steps, finite, fetched, strict=True):
            self.skips_in_a_row = 0 if ok else self.skips_in_a_row + 1
            if not ok and tr.on_nonfinite == "error":
                raise NonFiniteError(
                    f"The loss or gradient was not finite at step {s} (loss={m['loss']}, "
                    f"grad_norm={m['grad_norm']}). The update was not applied and no checkpoint "
                    f"after step {latest} was written. Lower optim.learning_rate, check the "
                    "data, or set training.on_nonfinite='skip'."
                )
            if self.skips_in_a_row >= limit:
                raise NonFiniteError(
                    f"{limit} steps in a row, up to step {s}, had a non-finite loss or gradient "
                    f"and were skipped (training.max_consecutive_skips={limit}): the run has "
                    f"diverged. Its last checkpoint is step {latest}; resume from it with a "
                    "lower optim.learning_rate, or check the data."
                )
        skipped = [s for s, ok in zip(steps, finite, strict=True) if not ok]
        if skipped:
            shown = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
            log.warning(
                "%d update(s) skipped for a non-finite loss or gradient (steps %s).",
                len(skipped), shown,
            )  # fmt: skip

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()


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
    hook: Hook | None = None,
) -> Any:
    """Runs `step_fn` from `state.step` to `training.num_steps`; returns the final state (or the
    state at which SIGTERM or Ctrl-C arrived, after checkpointing it). Closes `ckpt` on the way
    out and prints the run's summary line, whatever the way out."""
    from tqdm.auto import tqdm

    tr, start = training, int(state.step)
    bar = tqdm(
        total=tr.num_steps, initial=start, disable=jax.process_index() != 0,
        desc=f"{desc} {workdir.name}", dynamic_ncols=True,
    )  # fmt: skip
    metrics = MetricsLog(workdir, tr, bar, ckpt)
    outcome = "stopped by an error"
    try:
        with PreemptionGuard() as guard:
            for step in range(start + 1, tr.num_steps + 1):
                batch = parallel.global_batch(mesh, next(data_iter))
                state, step_metrics = step_fn(state, batch)
                metrics.pending.append((step, step_metrics))
                bar.update(1)
                last = step == tr.num_steps
                if step % tr.log_every == 0:
                    metrics.flush(step, state)
                stop = guard.should_stop(step)
                due = hook is not None and not stop and hook.due(step, last)
                if stop or last or due or step % tr.checkpoint_every == 0:
                    metrics.flush(step, state)  # raises before a save on a non-finite step
                    ckpt.save(step, state, saved_config, data_iter, force=True)
                if due:
                    metrics.write(step, hook.run(step, state, last) or {})
                if stop:
                    outcome = f"stopped by {guard.reason}, checkpoint saved"
                    break
            else:
                outcome = "finished"
    finally:
        bar.close()
        metrics.close()
        try:
            ckpt.close()
        finally:
            _summary(desc, workdir, state, start, tr.num_steps, outcome, ckpt)
    return state


def _summary(desc, workdir, state, start, num_steps, outcome, ckpt) -> None:
    """The run's last line: where it stopped, what it did, its last checkpoint."""
    if not parallel.is_main_process():
        return
    step, skipped = (int(v) for v in jax.device_get((state.step, state.skipped)))
    try:
        latest = ckpt.latest_step()
    except Exception:  # noqa: BLE001 (the summary must not hide the error being raised)
        latest = "unknown"
    print(
        f"{desc} {workdir}: {outcome} at step {step} of {num_steps} ({step - start} steps this "
        f"run, {skipped} skipped in all); last checkpoint: step {latest}.",
        flush=True,
    )
