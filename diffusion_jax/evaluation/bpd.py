"""The negative log-likelihood bound of a run in bits/dim over a dataset split (DDPM's NLL).

    run = runs.load_run("runs/digits")
    bpd.dataset_bpd(run, split="test")    # {"bpd": ..., "prior_bpd": ..., "decoder_bpd": ...}

`diffusion-jax evaluate --workdir RUN --bpd` is its command-line face.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.core import losses, schedules
from diffusion_jax.data import pipeline as data
from diffusion_jax.evaluation.extractor import local_mesh


def dataset_bpd(
    run: Any,
    *,
    split: str | None = None,
    batch_size: int = 64,
    max_examples: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """The full T-step variational bound of `run` (a `sampling.runs.Run`) over a dataset split in
    bits/dim. Example i gets the noise key fold_in(PRNGKey(seed), i), so its bound does not depend
    on the batch size, the last batch's padding or the number of devices and processes. Means over
    examples of "bpd" (L_T + sum of L_t), "prior_bpd" (L_T), "decoder_bpd" (L_0), "vb_bpd"
    (L_1..L_{T-1}), "mse" (eps MSE over t), and "num_examples"."""
    d = run.config.diffusion
    schedule = schedules.make_schedule(d.beta_schedule, d.num_timesteps)
    mesh = local_mesh()
    bs = -(-batch_size // mesh.size) * mesh.size
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    data_config = run.config.data
    if run.num_classes and not data_config.use_labels:
        data_config = data_config.copy_and_resolve_references()
        data_config.unlock()
        data_config.use_labels = True
    pc, pi = jax.process_count(), jax.process_index()
    it = data.make_eval_iterator(data_config, batch_size=bs, split=split)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="bits/dim", unit="batch")
    sums: dict[str, float] = {}
    count = 0
    for batch in it:
        n = len(batch["image"])
        if max_examples:
            n = min(n, max(0, -(-(max_examples - pi) // pc) - count))
        if n <= 0:
            break
        # the examples' positions in the split, padded to one shape with the last batch
        idx = _padded(pi + pc * (count + np.arange(n)), bs)
        y = _padded(batch["label"][:n], bs) if run.num_classes else None
        put = functools.partial(jax.device_put, device=sharding)
        out = _bpd_terms(
            run.apply_fn, run.params, schedule, put(_padded(batch["image"][:n], bs)),
            None if y is None else put(y), put(idx), jax.random.PRNGKey(seed),
            mean_type=d.mean_type, var_type=d.var_type,
        )  # fmt: skip
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64)[:n]))
        count += n
    return _mean_over_processes(sums, count, f"The {split or 'held-out'} split of "
                                f"{data_config.dataset} is empty.")  # fmt: skip


def _padded(rows, size: int) -> np.ndarray:
    """`rows` [n, ...] zero-padded to [size, ...] (int rows stay int, images become float32)."""
    rows = np.asarray(rows)
    dtype = np.int32 if np.issubdtype(rows.dtype, np.integer) else np.float32
    out = np.zeros((size, *rows.shape[1:]), dtype)
    out[: len(rows)] = rows
    return out


def _mean_over_processes(sums: dict[str, float], count: int, empty: str) -> dict[str, float]:
    keys = sorted(sums)
    totals = np.array([sums[k] for k in keys] + [count], np.float64)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        totals = np.sum(multihost_utils.process_allgather(totals), axis=0)
    total_count = int(totals[-1])
    if total_count == 0:
        raise ValueError(empty)
    result = {k: float(v / total_count) for k, v in zip(keys, totals[:-1], strict=True)}
    result["num_examples"] = float(total_count)
    return result


@functools.partial(jax.jit, static_argnames=("apply_fn", "mean_type", "var_type"))
def _bpd_terms(apply_fn, params, schedule, x0, y, idx, key, *, mean_type, var_type):
    """Each example's bound terms, its noise from fold_in(key, its index in the split); jitted at
    module level on `apply_fn`, so repeated evaluations (training's hook) compile once."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
    out = losses.calc_bpd_loop(
        apply_fn, params, schedule, x0, keys, y=y, mean_type=mean_type, var_type=var_type
    )
    return {
        "bpd": out["total_bpd"],
        "prior_bpd": out["prior_bpd"],
        "decoder_bpd": out["vb"][:, 0],
        "vb_bpd": jnp.sum(out["vb"][:, 1:], axis=1),
        "mse": jnp.mean(out["mse"], axis=1),
    }
