"""Resuming a run: which config changes a checkpointed run accepts, and the record of them.

    rules = resume.ResumeRules(fixed=("model", "diffusion"))
    state = resume.resume_or_init(ckpt, abstract, init, data_iter, config=config_dict,
                                  rules=rules, allow_changes=False, workdir=workdir)

Three kinds of key, compared with the config saved in the latest checkpoint:
- `fixed` keys define the model (its parameters, or what its output means): a change refuses to
  resume, always, naming each key; `resumable` ones among them (dropout, dtype, ...) may change;
- `guarded` keys change what the run trains on (data, batch, seed): a change refuses unless
  allowed (`allow_changes`, `train --allow_config_change`); the data then restart from the
  beginning of the new stream, as the saved position belongs to the old one;
- any other key (learning rate, num_steps, logging) may change.
Every accepted change is appended, with its step, to workdir/config_history.jsonl.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax

from diffusion_jax import checkpoint

# Keys of model.* / diffusion.* that may change between a run and its resumption: they do not
# change the parameters' shapes or what the network predicts.
RESUMABLE_KEYS = frozenset(
    {"model.dropout", "model.dtype", "diffusion.loss_type", "diffusion.class_drop_prob"}
)  # fmt: skip

# Keys that change the examples a run sees: refused on resumption unless allowed.
GUARDED_KEYS = (
    "seed", "data.dataset", "data.data_dir", "data.folder", "data.image_size",
    "data.random_flip", "data.use_labels", "data.skip_unreadable", "training.batch_size",
    "training.grad_accum_steps",
)  # fmt: skip

HISTORY_FILE = "config_history.jsonl"
_ABSENT = "(absent)"


@dataclasses.dataclass(frozen=True)
class ResumeRules:
    """What may change when a run resumes (see the module docstring); `what` names the run's
    kind in messages ("model", "classifier")."""

    fixed: tuple[str, ...] = ("model", "diffusion")
    resumable: frozenset = RESUMABLE_KEYS
    guarded: tuple[str, ...] = GUARDED_KEYS
    what: str = "model"


def _under(key: str, sections: Iterable[str]) -> bool:
    return any(key == s or key.startswith(s + ".") for s in sections)


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def as_dict(config: Any) -> dict:
    """A ConfigDict or a dict as plain JSON values (tuples as lists, as saved)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(dict(config)))


def config_changes(saved: Mapping, config: Any) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, current value)} of every key that differs, in config order."""
    old, new = _flatten(saved), _flatten(as_dict(config))
    keys = list(new) + [k for k in old if k not in new]
    return {
        k: (old.get(k, _ABSENT), new.get(k, _ABSENT))
        for k in keys
        if old.get(k, _ABSENT) != new.get(k, _ABSENT)
    }


def model_changes(changes: Mapping, rules: ResumeRules) -> list[str]:
    """The `changes` (`config_changes`) of `rules.fixed` keys, as readable lines, in the order of
    `rules.fixed`; empty when the checkpoint is of the same model."""
    rank = {k: next(i for i, s in enumerate(rules.fixed) if _under(k, (s,))) for k in changes
            if _under(k, rules.fixed) and k not in rules.resumable}  # fmt: skip
    return [_line(k, *changes[k]) for k in sorted(rank, key=lambda k: (rank[k], k))]


def _line(key: str, old: Any, new: Any) -> str:
    return f"{key}: checkpoint {old!r}, config {new!r}"


def resume_or_init(
    ckpt: checkpoint.Checkpointer,
    abstract: Any,
    init: Callable[[], Any],
    data_iter: Any,
    *,
    config: Any,
    rules: ResumeRules | None = None,
    allow_changes: bool = False,
    workdir: Path | None = None,
) -> Any:
    """The latest checkpoint's state (and data position), or `init()` for a fresh workdir.
    Raises CheckpointError for a change `rules` refuse (before anything is read or written);
    appends accepted changes to workdir/config_history.jsonl. Closes `ckpt` when it raises."""
    rules = rules or ResumeRules()
    try:
        if ckpt.latest_step() is None:
            return init()
        changes = config_changes(ckpt.restore_config(), config)
        _refuse(ckpt, changes, rules, allow_changes)
        data_changed = any(_under(k, rules.guarded) and old != _ABSENT
                           for k, (old, _) in changes.items())  # fmt: skip
        state, _ = ckpt.restore(abstract, None if data_changed else data_iter)
    except BaseException:
        ckpt.close()
        raise
    step = int(state.step)
    if jax.process_index() == 0:
        print(f"Resumed the {rules.what} from step {step} ({ckpt.directory}).", flush=True)
        if data_changed:
            print("The data changed, so they start from the beginning of the new stream.")
        if changes and workdir is not None:
            _record(Path(workdir), step, changes)
    return state


def _refuse(ckpt, changes: dict, rules: ResumeRules, allow_changes: bool) -> None:
    run = ckpt.directory.parent
    fixed = model_changes(changes, rules)
    if fixed:
        raise checkpoint.CheckpointError(
            f"{run} holds a run of a different {rules.what} ({'; '.join(fixed)}): use a fresh "
            "--workdir, or the config that run was started with."
        )
    # A key the saved run did not have yet (an older version) is no change of its data.
    guarded = [k for k in changes if _under(k, rules.guarded) and changes[k][0] != _ABSENT]
    if guarded and not allow_changes:
        raise checkpoint.CheckpointError(
            f"resuming {run} with other data, batch or seed than it was trained with "
            f"({'; '.join(_line(k, *changes[k]) for k in guarded)}): resume with the saved "
            "values, or accept the change with --allow_config_change (Python: "
            f"allow_changes=True; it is recorded in {run / HISTORY_FILE})."
        )


def _record(workdir: Path, step: int, changes: dict) -> None:
    entry = {
        "step": step,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()},
    }
    with open(workdir / HISTORY_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(f"Config changes since the checkpoint recorded in {workdir / HISTORY_FILE}: "
          f"{', '.join(changes)}.")  # fmt: skip
