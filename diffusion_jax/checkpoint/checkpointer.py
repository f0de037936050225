"""The Checkpointer: orbax storage of a run's state, config and data position (see the package
docstring for the guarantees)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from typing import Any

import grain.checkpoint as grain_checkpoint
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from diffusion_jax.checkpoint import trees
from diffusion_jax.errors import UserError, os_error_in

log = logging.getLogger(__name__)

# Orbax writes one of these into a step directory before committing it (rename or commit file).
_STEP_MARKERS = ("_CHECKPOINT_METADATA", "commit_success.txt")

# grain's file of one process's iterator position.
_DATA_FILE = re.compile(r"process_\d+-of-(\d+)\.json")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be written or read; the message says which one and what to do."""


class Checkpointer:
    """Saves and restores (TrainState, config, data iterator) under `workdir/checkpoints`.
    `workdir`: a local path or anything `etils.epath` opens (gs://...). `save_every`, `keep` (None:
    all) and `keep_every` (0: none): see the module docstring. `async_save` writes in a background
    thread (`wait()` / `close()` before reading). `read_only` only restores (e.g. to sample from a
    run still training), leaving tmp and incomplete directories alone: a save may be running."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        save_every: int = 1,
        keep: int | None = None,
        keep_every: int = 0,
        async_save: bool = True,
        read_only: bool = False,
    ):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}.")
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 (or None to keep every checkpoint), got {keep}.")
        workdir = str(workdir)
        if "://" not in workdir:
            workdir = os.path.abspath(workdir)  # orbax wants absolute paths
        self.directory = epath.Path(workdir) / "checkpoints"
        self.read_only = read_only
        _whole_array_writes_on_cpu()
        if jax.process_index() == 0 and not read_only:
            _quarantine_incomplete_steps(self.directory)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("diffusion_jax.checkpoint:quarantine")

        preserve = [policies.LatestN(n=keep)]
        if keep_every:
            preserve.append(policies.EveryNSteps(interval_steps=keep_every))
        options = ocp.CheckpointManagerOptions(
            # Policies, not the deprecated max_to_keep / keep_period / save_interval_steps, and no
            # default InitialSavePolicy (it saves a fresh run's first step, whatever save_every).
            save_decision_policy=policies.AnySavePolicy(
                [policies.FixedIntervalPolicy(save_every), policies.PreemptionCheckpointingPolicy()]
            ),
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
        )
        # Explicit handlers, so that item_metadata() can read a step before anything is restored.
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
            "data": grain_checkpoint.CheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def save(
        self,
        step: int,
        state: Any,
        config: Any,
        data_iterator: Any = None,
        *,
        force: bool = False,
    ) -> bool:
        """Saves `state` (a pytree of arrays), `config` (a ConfigDict or dict) and the position
        of `data_iterator` (a grain iterator) as `step`, if step % save_every == 0 or `force`.
        Returns whether a save was started: not for a step already saved, so a forced save at the
        end may follow an interval save of the same step. Raises CheckpointError, writing nothing,
        if any floating-point leaf is not finite."""
        step = int(step)
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only; it cannot save.")
        if step in self._manager.all_steps():
            return False
        if not force and not self._manager.should_save(step):
            return False
        bad = trees.nonfinite_leaves(state)
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise CheckpointError(
                f"Refusing to save step {step}: the state has NaN or Inf values in {shown}. The "
                f"checkpoints in {self.directory} (latest: {self._manager.latest_step()}) are "
                "kept; resume with a lower learning rate, or check the data."
            )
        config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        items = {
            "state": ocp.args.StandardSave(state),
            # Through JSON text so that tuples become lists, as they come back from disk.
            "config": ocp.args.JsonSave(json.loads(json.dumps(config_dict))),
        }
        if data_iterator is not None:
            items["data"] = grain_checkpoint.CheckpointSave(data_iterator)
        self._check_space(step, state)
        with self._disk_errors(step):
            return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def _check_space(self, step: int, state: Any) -> None:
        """A CheckpointError, before writing, when the disk cannot hold this process's share."""
        if "://" not in str(self.directory):
            need = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))
            need //= jax.process_count()
            on = next(p for p in (self.directory, *self.directory.parents) if p.exists())
            if (free := shutil.disk_usage(on).free) < need:
                raise CheckpointError(self._full(step, f"it needs {_mib(need)}, {_mib(free)} free"))

    @contextlib.contextmanager
    def _disk_errors(self, step: int | None):
        """A full disk or quota met while writing, as one CheckpointError naming the directory."""
        try:
            yield
        except Exception as e:
            cause = os_error_in(e)
            if cause is None or cause.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise CheckpointError(self._full(step, cause.strerror)) from e

    def _full(self, step: int | None, why: str) -> str:
        return (
            f"Could not save {f'step {step}' if step is not None else 'a checkpoint'} in "
            f"{self.directory} ({why}). The checkpoints before it are kept "
            f"({self.all_steps()}); free some space or lower training.keep_checkpoints, "
            "and resume."
        )

    def wait(self) -> None:
        """Blocks until every started save is on disk (and old ones are deleted)."""
        with self._disk_errors(None):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's threads."""
        with self._disk_errors(None):
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def all_steps(self) -> list[int]:
        """The saved steps, ascending (including one still being written asynchronously)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The most recent saved step, or None in a fresh directory."""
        return self._manager.latest_step()

    def restore_config(self, step: int | None = None) -> dict:
        """The config dict saved with `step` (default: the latest), without touching the state."""
        step = self._resolve_step(step)
        return self._read(step, {"config": ocp.args.JsonRestore()})["config"]

    def restore(
        self,
        abstract_state: Any,
        data_iterator: Any = None,
        step: int | None = None,
        *,
        partial: bool = False,
    ) -> tuple[Any, dict]:
        """Restores `step` (default: the latest) as (state, config dict).
        `abstract_state`: the state's tree of `jax.ShapeDtypeStruct`s (`jax.eval_shape` of the init
        function); a leaf's `.sharding` says where its array goes (none: replicated over all
        devices), and arrays are cast to its dtypes. A given `data_iterator`'s position is set in
        place to the saved one. With `partial`, `abstract_state` may be a sub-tree of the saved
        state (e.g. {"step", "ema_params"}): only those leaves are read."""
        self.wait()  # a step still being written asynchronously cannot be read yet
        step = self._resolve_step(step)
        self._check_tree(step, abstract_state, partial=partial)
        target = jax.tree.map(trees.with_sharding, abstract_state)
        if partial:
            return self._read_partial(step, target), self.restore_config(step)
        items = {"state": ocp.args.StandardRestore(target), "config": ocp.args.JsonRestore()}
        if data_iterator is not None:
            if not (self._step_dir(step) / "data").exists():
                raise CheckpointError(
                    f"Checkpoint {self._step_dir(step)} has no data-iterator position; restore "
                    "with data_iterator=None to start the data from the beginning."
                )
            self._check_data_processes(step)
            items["data"] = grain_checkpoint.CheckpointRestore(data_iterator)
        restored = self._read(step, items)
        return restored["state"], restored["config"]

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"No checkpoint in {self.directory}.")
            return steps[-1]
        if int(step) not in steps:
            raise CheckpointError(
                f"No checkpoint for step {step} in {self.directory}; saved steps: {steps}."
            )
        return int(step)

    def _read(self, step: int, items: dict) -> dict:
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(self._unreadable(step, e)) from e

    def _unreadable(self, step: int, e: Exception) -> str:
        earlier = [s for s in self.all_steps() if s < step]
        hint = f"restore an earlier step (step=..., saved: {earlier})" if earlier else "start over"
        detail = str(e).split(" [tensorstore_spec=")[0]  # the spec is a page of JSON
        detail = detail if len(detail) < 400 else detail[:400] + "..."
        return (
            f"Could not read checkpoint {self._step_dir(step)}: {type(e).__name__}: {detail}. Its "
            "files are truncated or corrupted (an interrupted copy, a full disk?): delete that "
            f"directory or {hint}."
        )

    def _read_partial(self, step: int, target: Any) -> Any:
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        try:
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
                return reader.restore(self._step_dir(step) / "state", args=args)
        except Exception as e:
            raise CheckpointError(self._unreadable(step, e)) from e

    def _check_data_processes(self, step: int) -> None:
        """grain saves one position per process (process_<i>-of-<n>.json): a run of another
        process count finds no file of its own, which is said plainly here."""
        names = [p.name for p in (self._step_dir(step) / "data").iterdir()]
        counts = {int(m.group(1)) for n in names if (m := _DATA_FILE.fullmatch(n))}
        here = jax.process_count()
        if counts and here not in counts:
            saved = sorted(counts)[0]
            raise CheckpointError(
                f"Checkpoint {self._step_dir(step)} was written by {saved} process(es) and this "
                f"run has {here}: the data iterators' positions are saved per process. Resume "
                f"with {saved} process(es), or start the data from the beginning of its stream "
                "(restore with data_iterator=None) in a fresh workdir."
            )

    def _check_tree(self, step: int, abstract_state: Any, *, partial: bool = False) -> None:
        """Compares leaf paths and shapes with the saved tree, before orbax sees them."""
        try:
            saved = self._manager.item_metadata(step)["state"]
        except Exception as e:
            raise CheckpointError(self._unreadable(step, e)) from e
        if saved is None:
            raise CheckpointError(self._unreadable(step, ValueError("no 'state' item")))
        saved = trees.shapes_by_path(getattr(saved, "tree", saved))
        expected = trees.shapes_by_path(abstract_state)
        diffs = [
            f"{path}: saved shape {saved[path]}, expected {shape}"
            for path, shape in expected.items()
            if path in saved and saved[path] != shape
        ]
        diffs += [f"{path}: not in the checkpoint" for path in expected if path not in saved]
        if not partial:
            diffs += [f"{path}: in the checkpoint only" for path in saved if path not in expected]
        if diffs:
            shown = "; ".join(diffs[:6]) + (
                f"; and {len(diffs) - 6} more" if len(diffs) > 6 else ""
            )
            raise CheckpointError(
                f"Checkpoint {self._step_dir(step)} holds a different model: {shown}. Use a "
                "fresh --workdir, or the config that run was trained with (saved in "
                f"{self._step_dir(step) / 'config'})."
            )


def _whole_array_writes_on_cpu() -> None:
    """On CPU, orbax writes each replicated array whole, not in per-device slices (its
    replica-parallel default dispatches and compiles once per slice: ~10 s on the first save of
    a U-Net on 8 CPU devices, for nothing when the copies share one host). Same files."""
    if jax.default_backend() != "cpu":
        return
    try:
        from orbax.checkpoint._src.metadata import array_metadata_store

        handler = ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()
        )
    except (ImportError, AttributeError, TypeError):  # another orbax: keep its defaults
        return
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _quarantine_incomplete_steps(directory: epath.Path) -> None:
    """Renames step directories that no completed save wrote, out of orbax's sight."""
    if not directory.exists():
        return
    for path in directory.iterdir():
        if re.fullmatch(r"\d+", path.name) and path.is_dir():
            if not any((path / marker).exists() for marker in _STEP_MARKERS):
                target, n = path.parent / f"{path.name}.incomplete", 1
                while target.exists():
                    target, n = path.parent / f"{path.name}.incomplete-{n}", n + 1
                log.warning("Checkpoint %s is incomplete; moving it to %s.", path, target)
                path.rename(target)
