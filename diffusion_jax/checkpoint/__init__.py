"""Checkpoints of a run: the TrainState, the config and the data iterator, through orbax.

    with checkpoint.Checkpointer(workdir, save_every=10_000, keep=3, keep_every=100_000) as ckpt:
        if ckpt.latest_step() is not None:
            state, saved = ckpt.restore(abstract_state, data_iter)   # abstract: ShapeDtypeStructs
        for step in ...:                                             #   with .sharding set
            state = train_step(state, next(data_iter))
            ckpt.save(step, state, config, data_iter)
    # inference reads only what it needs, e.g. {"step": ..., "ema_params": ...}:
    state, _ = Checkpointer(workdir, read_only=True).restore(subtree, partial=True)

Checkpoints live in `workdir/checkpoints/<step>/{state,config,data}`. A step is saved when it is a
multiple of `save_every` (or with `force=True`, or at a multi-host preemption sync point); the last
`keep` saved steps are kept, and every multiple of `keep_every` forever. Saves are asynchronous by
default: `save` returns once the arrays are in host memory; `wait()` / `close()` block until they
are on disk. Guarantees:
- `save` refuses, writing nothing, when the disk has less free space than the state needs; a
  full disk met while writing is one CheckpointError naming the directory; the earlier
  checkpoints are kept either way.
- `save` refuses a state with a NaN or Inf anywhere (it raises and writes nothing), so a diverged
  run never buries its last good checkpoint.
- `restore` reshards onto the shardings `abstract_state` carries (saved on 8 devices, resumed on 1
  or 4); with `partial=True` it reads only the leaves `abstract_state` names. The tree is checked
  first: a checkpoint of a different model is reported by leaf path and shape.
- A save killed midway leaves `<step>.orbax-checkpoint-tmp*`, which orbax never lists and the next
  Checkpointer deletes. A step directory without orbax's step metadata (a partial copy) is renamed
  to `<step>.incomplete`, so it is neither resumed from nor blocks later saves of the same step.

A layer-1 package: it may import diffusion_jax.errors only.
"""

from diffusion_jax.checkpoint.checkpointer import Checkpointer, CheckpointError

__all__ = ["CheckpointError", "Checkpointer"]
