"""The one host-side training driver, shared by the diffusion model and the guidance classifier.

    state = loop.fit(parts, mesh, workdir, make_step=step.make_train_step,
                     saved_config=config, mismatch=lambda saved: [...], hook=hook)

`fit` builds the sharded state, compiles the step, opens the data and the checkpoints, resumes
(refusing another model's checkpoint: `config_mismatch`) and runs `run_loop`: metrics every
`log_every` steps (metrics.jsonl, TensorBoard; `NonFiniteError` names the first non-finite step),
checkpoints every `checkpoint_every` steps, at the end and on SIGTERM, and `hook(step, state,
last)` after each step (samples, evaluations; the scalars it returns are logged).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffusion_jax import checkpoint, parallel
from diffusion_jax.data import pipeline as data
from diffusion_jax.training.preemption import PreemptionGuard
from diffusion_jax.training.state import init_state
from diffusion_jax.training.step import compile_train_step

log = logging.getLogger(__name__)

# Keys of model.* / diffusion.* that may change between a run and its resumption: they do not
# change the parameters' shapes or what the network predicts.
RESUMABLE_KEYS = frozenset(
    {"model.dropout", "model.dtype", "diffusion.loss_type", "diffusion.timestep_sampler",
     "diffusion.class_drop_prob"}
)  # fmt: skip

Hook = Callable[[int, Any, bool], "dict | None"]


class NonFiniteError(FloatingPointError):
    """The loss or gradient stopped being finite; the run stops and keeps its last checkpoint."""


def fit(
    parts: Any,
    mesh: jax.sharding.Mesh,
    workdir: Path,
    *,
    make_step: Callable[[Any], Callable],
    saved_config: Any,
    mismatch: Callable[[dict], list[str]],
    hook: Hook | None = None,
    what: str = "model",
) -> Any:
    """Trains `parts` (`setup.Parts`) on `mesh` in `workdir`, from its latest checkpoint if it
    has one, to `training.num_steps`; returns the final state. `saved_config` (a ConfigDict or a
    dict) is checkpointed and written to workdir/config.json; `mismatch(saved_config_dict)`
    lists what makes a saved run a different one (any line refuses to resume)."""
    config = parts.config
    tr = config.training
    abstract, init = init_state(parts, mesh)
    state_sharding = jax.tree_util.tree_map(lambda a: a.sharding, abstract)
    step_fn = compile_train_step(make_step(parts), mesh, state_sharding)
    if parallel.is_main_process():
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
    ckpt = open_checkpointer(workdir, tr)
    state = resume_or_init(ckpt, abstract, init, data_iter, mismatch=mismatch, what=what)
    if hasattr(saved_config, "to_json_best_effort"):  # a ConfigDict: as plain JSON values
        saved_config = json.loads(saved_config.to_json_best_effort())
    if parallel.is_main_process():
        (workdir / "config.json").write_text(json.dumps(saved_config, indent=2))
    return run_loop(
        state=state, step_fn=step_fn, data_iter=data_iter, mesh=mesh, ckpt=ckpt,
        saved_config=saved_config, training=tr, workdir=workdir, hook=hook,
        desc="training" if what == "model" else what,
    )  # fmt: skip


def open_checkpointer(workdir: Path, training) -> checkpoint.Checkpointer:
    """The run's Checkpointer, with the retention and async settings of `config.training`."""
    return checkpoint.Checkpointer(
        workdir,
        save_every=training.checkpoint_every,
        keep=training.keep_checkpoints,
        keep_every=training.keep_every,
        async_save=training.async_checkpoints,
    )


def config_mismatch(
    saved_config: Mapping,
    config: Any,
    *,
    sections: Iterable[str] = ("model", "diffusion"),
    ignore: Iterable[str] = RESUMABLE_KEYS,
) -> list[str]:
    """The keys under `sections` (section names like "model", or dotted keys like
    "diffusion.num_timesteps") whose values differ, as readable lines; keys in `ignore` may
    change on resumption. An empty list means the checkpoint is of the same model."""
    current = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    old = _flatten(saved_config, "")
    new = _flatten(json.loads(json.dumps(current)), "")  # tuples -> lists, as in the saved JSON
    sections, ignore = tuple(sections), set(ignore)

    def section(key: str) -> int | None:  # the position of the key's section, None: not wanted
        found = [i for i, s in enumerate(sections) if key == s or key.startswith(s + ".")]
        return found[0] if found and key not in ignore else None

    absent = "(absent)"
    keys = [(section(k), k) for k in old.keys() | new.keys() if section(k) is not None]
    return [
        f"{key}: checkpoint {old.get(key, absent)!r}, config {new.get(key, absent)!r}"
        for _, key in sorted(keys)
        if old.get(key, absent) != new.get(key, absent)
    ]


def _flatten(tree: Mapping, prefix: str) -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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


class MetricsLog:
    """Step metrics fetched in groups: every `log_every` steps they are copied to the host, checked
    for a non-finite step, averaged, and written to TensorBoard (tensorboardX) and metrics.jsonl
    on the first host, with the progress bar's postfix."""

    def __init__(self, workdir: Path, training, bar, ckpt: checkpoint.Checkpointer):
        self.training, self.bar, self.ckpt = training, bar, ckpt
        self.pending: list[tuple[int, dict]] = []
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
        if self.training.on_nonfinite == "error":
            for s, m in zip(steps, fetched, strict=True):
                if not m["finite"]:
                    raise NonFiniteError(
                        f"The loss or gradient was not finite at step {s} (loss={m['loss']}, "
                        f"grad_norm={m['grad_norm']}). The update was not applied and no "
                        f"checkpoint after step {self.ckpt.latest_step()} was written. Lower "
                        "optim.learning_rate, check the data, or set "
                        "training.on_nonfinite='skip'."
                    )
        now = time.time()
        rate = (step - self.clock[1]) / max(now - self.clock[0], 1e-9)
        self.clock = (now, step)
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1] if k != "finite"}
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
    state at which SIGTERM arrived, after checkpointing it). Closes `ckpt` on the way out."""
    from tqdm.auto import tqdm

    tr = training
    bar = tqdm(
        total=tr.num_steps,
        initial=int(state.step),
        disable=jax.process_index() != 0,
        desc=f"{desc} {workdir.name}",
        dynamic_ncols=True,
    )
    metrics = MetricsLog(workdir, tr, bar, ckpt)
    try:
        with PreemptionGuard() as guard:
            for step in range(int(state.step) + 1, tr.num_steps + 1):
                batch = parallel.global_batch(mesh, next(data_iter))
                state, step_metrics = step_fn(state, batch)
                metrics.pending.append((step, step_metrics))
                bar.update(1)
                last = step == tr.num_steps
                if step % tr.log_every == 0:
                    metrics.flush(step, state)
                if hook is not None:
                    metrics.write(step, hook(step, state, last) or {})
                stop = guard.should_stop(step)
                if stop or last or step % tr.checkpoint_every == 0:
                    metrics.flush(step, state)  # raises before a save on a non-finite step
                    ckpt.save(step, state, saved_config, data_iter, force=True)
                if stop:
                    log.warning("SIGTERM: saved a checkpoint at step %d and stopped.", step)
                    print(f"Preempted: checkpoint saved at step {step}.", flush=True)
                    break
    finally:
        bar.close()
        ckpt.close()
        metrics.close()
    return state
