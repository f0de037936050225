"""Evaluating a run as the papers do: sample quality against reference statistics, and the
negative log-likelihood bound in bits/dim over a dataset.

    extractor = features.get_extractor("inception")
    ref = evaluate.reference_statistics(extractor, data_config=config.data, split="train")
    evaluate.save_reference("cifar10_train.npz", ref)
    scores = evaluate.sample_metrics(samples_uint8, extractor, ref)   # fid, is, kid, precision..
    bpd = evaluate.dataset_bpd(run, split="test")                     # {"bpd": ..., ...}

`diffusion-jax ref-stats` and `diffusion-jax evaluate` are the command-line faces of these
functions; `make_train_eval_fn` gives training its periodic bpd and FID (`config.eval`).

A reference (`Reference`) holds the mean and covariance of the extractor's features over a
dataset split or image folder, and optionally the features themselves: KID and precision/recall
compare sets of features, not moments, so they need them. Reference files are .npz; the published
TTUR and clean-fid statistics files (keys mu, sigma) load as references without features.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parallel
from diffusion_jax.evaluation import metrics
from diffusion_jax.evaluation.features import (
    FeatureExtractor,
    check_images,
    dataset_images,
    local_mesh,
)

METRICS = ("fid", "is", "kid", "pr")


@dataclasses.dataclass(frozen=True)
class Reference:
    """Feature statistics of a reference set; `features` is None for a published stats file."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    extractor: str = ""
    num_images: int = 0
    source: str = ""


# ----------------------------------------------------------------------------- references


def reference_statistics(
    extractor: FeatureExtractor,
    *,
    data_config: Any = None,
    split: str | None = None,
    images: np.ndarray | None = None,
    max_images: int = 0,
    keep_features: bool = True,
    source: str = "",
) -> Reference:
    """The reference statistics of a dataset split (`data_config`, `split`; None = held-out) or of
    an array of uint8 `images`, through `extractor`; at most `max_images` images (0: all)."""
    if (data_config is None) == (images is None):
        raise ValueError("Give either data_config (a dataset split) or images, not both.")
    acc = metrics.StatsAccumulator()
    kept = []
    if images is not None:
        images = check_images(images)[: max_images or None]
        batches = [images[i : i + 4096] for i in range(0, len(images), 4096)]
        source = source or f"{len(images)} images"
    else:
        batches = (x for x, _ in dataset_images(data_config, split=split, max_images=max_images))
        source = source or f"{data_config.dataset}:{split or 'held-out'}"
    for batch in batches:
        feats, _ = extractor(batch)
        acc.update(feats)
        if keep_features:
            kept.append(feats.astype(np.float32))
    if acc.num_samples < 2:
        raise ValueError(
            f"Reference statistics need at least 2 images; {source} has {acc.num_samples}."
        )
    mu, sigma = acc.result()
    return Reference(
        mu=mu,
        sigma=sigma,
        features=np.concatenate(kept) if keep_features else None,
        extractor=extractor.name,
        num_images=acc.num_samples,
        source=source,
    )


def save_reference(path: str | Path, ref: Reference) -> Path:
    """Writes `ref` as .npz (mu, sigma, optional features, and the extractor's name)."""
    extra = {} if ref.features is None else {"features": ref.features}
    return metrics.save_statistics(
        path,
        ref.mu,
        ref.sigma,
        extractor=ref.extractor,
        num_images=ref.num_images,
        source=ref.source,
        **extra,
    )


def load_reference(path: str | Path) -> Reference:
    """A reference written by `save_reference`, or a published statistics file (TTUR, clean-fid:
    Inception features, no `features` array)."""
    mu, sigma, meta = metrics.load_statistics(path)
    feats = meta.get("features")
    return Reference(
        mu=mu,
        sigma=sigma,
        features=None if feats is None else np.asarray(feats),
        extractor=str(meta.get("extractor", "")),
        num_images=int(meta.get("num_images", 0)),
        source=str(meta.get("source", Path(path).name)),
    )


# ----------------------------------------------------------------------------- sample metrics


def sample_metrics(
    images: np.ndarray,
    extractor: FeatureExtractor,
    reference: Reference | None,
    *,
    metrics_to_compute: Sequence[str] = METRICS,
    labels: np.ndarray | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """FID, Inception Score, KID and precision/recall of uint8 `images` against `reference`.

    `metrics_to_compute` is a subset of METRICS; "is" needs no reference. KID and "pr" need the
    reference's features (a published stats file has none: a ValueError says so). With `labels`
    (the classes the samples were drawn for) and an extractor whose logits are the same classes,
    also "class_accuracy": how often the extractor recognises the requested class."""
    unknown = set(metrics_to_compute) - set(METRICS)
    if unknown:
        raise ValueError(f"Unknown metrics {sorted(unknown)}: choose from {METRICS}.")
    images = check_images(images, "samples")
    needs_ref = [m for m in metrics_to_compute if m != "is"]
    if needs_ref and reference is None:
        raise ValueError(f"{needs_ref} compare against reference statistics: give a reference.")
    if reference is not None and reference.extractor and reference.extractor != extractor.name:
        raise ValueError(
            f"The reference statistics were computed with the {reference.extractor!r} features "
            f"but the samples go through {extractor.name!r}: statistics are only comparable "
            "under the same feature extractor. Recompute them with diffusion-jax ref-stats."
        )
    feats, logits = extract_split(extractor, images)
    out: dict[str, float] = {"num_samples": float(len(images))}
    if "fid" in metrics_to_compute:
        mu, sigma = metrics.feature_statistics(feats)
        out["fid"] = metrics.frechet_distance(mu, sigma, reference.mu, reference.sigma)
    if "is" in metrics_to_compute:
        out["is"], out["is_std"] = metrics.inception_score(logits, splits=10)
    for name in ("kid", "pr"):
        if name in metrics_to_compute and reference.features is None:
            raise ValueError(
                f"{name.upper()} compares sets of features, and the reference {reference.source} "
                "holds only their mean and covariance (a published statistics file?). Compute a "
                "reference with features: diffusion-jax ref-stats ... (features are kept unless "
                "--stats_only)."
            )
    if "kid" in metrics_to_compute:
        out["kid"], out["kid_std"] = metrics.kernel_inception_distance(
            reference.features,
            feats,
            num_subsets=kid_subsets,
            subset_size=kid_subset_size,
            seed=seed,
        )
    if "pr" in metrics_to_compute:
        out["precision"], out["recall"] = metrics.precision_recall(
            reference.features, feats, k=pr_k
        )
    if labels is not None and len(labels) == len(images) and extractor.num_logits > 0:
        valid = labels >= 0
        if valid.any() and labels[valid].max() < extractor.num_logits:
            pred = np.argmax(logits, axis=-1)
            out["class_accuracy"] = float(np.mean(pred[valid] == labels[valid]))
    return {k: float(v) for k, v in out.items()}


def extract_split(extractor: FeatureExtractor, images: np.ndarray):
    """`extractor(images)`, with the work split over the processes: each process extracts the
    features of its contiguous block of the images, and the blocks are gathered once (every
    process gets all of them, in order). One process simply calls the extractor."""
    pc = jax.process_count()
    if pc == 1:
        return extractor(images)
    block = np.array_split(np.arange(len(images)), pc)[jax.process_index()]
    feats, logits = extractor(images[block[0] : block[-1] + 1] if len(block) else images[:0])
    return parallel.allgather_rows(feats), parallel.allgather_rows(logits)


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 images, labels or None) of a samples .npz (`arr_0`, as written by
    `diffusion-jax sample` and read by the FID tools), or a .npy array of images."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No samples file {path}: draw some with diffusion-jax sample.")
    if path.suffix == ".npy":
        return check_images(np.load(path), str(path)), None
    with np.load(path) as f:
        if "arr_0" not in f:
            raise ValueError(
                f"{path} has the arrays {sorted(f.files)}, not 'arr_0' (uint8 [N, H, W, C]) as "
                "`diffusion-jax sample` writes them."
            )
        labels = f["labels"] if "labels" in f.files else None
        return check_images(f["arr_0"], str(path)), labels


# ----------------------------------------------------------------------------- bits/dim


def dataset_bpd(
    run: Any,
    *,
    split: str | None = None,
    batch_size: int = 64,
    max_examples: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """The full T-step variational bound over a dataset split, in bits/dim (DDPM's NLL).

    `run` is a `generate.Run` (its config's data, diffusion and parameters). Example i of the
    split gets the noise key fold_in(PRNGKey(seed), i), so its bound does not depend on the
    batch size, the padding of the last batch or the number of devices and processes. Batches
    are split over the local devices; each process reads its share of the split and the sums are
    gathered once. Returns the means over examples: "bpd" (the bound, L_T + sum of L_t),
    "prior_bpd" (L_T), "decoder_bpd" (L_0), "vb_bpd" (the L_1..L_{T-1} sum), "mse" (mean eps
    MSE over t) and "num_examples"."""
    from diffusion_jax.core import schedules
    from diffusion_jax.data import pipeline as data

    config = run.config
    d = config.diffusion
    schedule = schedules.make_schedule(d.beta_schedule, d.num_timesteps)
    mesh = local_mesh()
    bs = -(-batch_size // mesh.size) * mesh.size
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    conditional = run.num_classes > 0
    data_config = config.data
    if conditional and not data_config.use_labels:
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
        x = np.asarray(batch["image"], np.float32)
        n = len(x)
        if max_examples:
            n = min(n, max(0, -(-(max_examples - pi) // pc) - count))
        if n <= 0:
            break
        x0 = np.zeros((bs, *x.shape[1:]), np.float32)
        x0[:n] = x[:n]
        idx = np.zeros((bs,), np.int32)
        idx[:n] = pi + pc * (count + np.arange(n))  # the examples' positions in the split
        y = None
        if conditional:
            y = np.zeros((bs,), np.int32)
            y[:n] = np.asarray(batch["label"])[:n]
            y = jax.device_put(y, sharding)
        out = _bpd_terms(
            run.apply_fn,
            run.params,
            schedule,
            jax.device_put(x0, sharding),
            y,
            jax.device_put(idx, sharding),
            jax.random.PRNGKey(seed),
            mean_type=d.mean_type,
            var_type=d.var_type,
        )
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64)[:n]))
        count += n
    keys = sorted(sums)
    totals = np.array([sums.get(k, 0.0) for k in keys] + [count], np.float64)
    if pc > 1:
        from jax.experimental import multihost_utils

        totals = np.sum(multihost_utils.process_allgather(totals), axis=0)
    total_count = int(totals[-1])
    if total_count == 0:
        raise ValueError(f"The {split or 'held-out'} split of {data_config.dataset} is empty.")
    result = {k: float(v / total_count) for k, v in zip(keys, totals[:-1], strict=True)}
    result["num_examples"] = float(total_count)
    return result


@functools.partial(jax.jit, static_argnames=("apply_fn", "mean_type", "var_type"))
def _bpd_terms(apply_fn, params, schedule, x0, y, idx, key, *, mean_type, var_type):
    """Each example's bound terms, with the noise of key fold_in(key, its index in the split).
    Module-level and jitted on `apply_fn`, so repeated evaluations (training's hook) compile once.
    """
    from diffusion_jax.core import losses

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


# ----------------------------------------------------------------------------- training hook


def make_train_eval_fn(config: Any, apply_fn: Any, workdir: str | Path):
    """`eval_fn(state, step) -> dict` for `train.train`, from `config.eval`: the bound in bits/dim
    on `eval.bpd_examples` held-out examples, and FID (+ the other sample metrics) of
    `eval.num_samples` samples (`eval.sampler`, `eval.steps` respaced steps) against the held-out
    split's reference statistics under `eval.features` (cached in workdir/eval/). None when
    `config.eval` asks for nothing."""
    from diffusion_jax.data import pipeline as data
    from diffusion_jax.sampling import generate

    ev = config.eval
    if not (ev.bpd_examples or ev.num_samples):
        return None
    workdir = Path(workdir)
    shape = tuple(data.example_shape(config.data))
    cache: dict[str, Any] = {}

    def reference(extractor):
        if "ref" not in cache:
            path = Path(ev.reference) if ev.reference else None
            if path is None:
                tag = extractor.name.replace(":", "_").replace("/", "_")
                path = workdir / "eval" / f"reference_{tag}.npz"
            if path.exists():
                cache["ref"] = load_reference(path)
            else:
                cache["ref"] = reference_statistics(extractor, data_config=config.data)
                if parallel.is_main_process():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    save_reference(path, cache["ref"])
        return cache["ref"]

    def eval_fn(state, step: int) -> dict[str, float]:
        # Each process evaluates on its own devices, with a full copy of the EMA parameters.
        params = parallel.to_local(state.ema_params)
        run = generate.Run(config, apply_fn, params, shape, int(step), True)
        out: dict[str, float] = {}
        if ev.bpd_examples:
            bpd = dataset_bpd(run, batch_size=ev.batch_size, max_examples=ev.bpd_examples)
            out.update({"bpd": bpd["bpd"], "prior_bpd": bpd["prior_bpd"]})
        if ev.num_samples:
            if "extractor" not in cache:
                from diffusion_jax.evaluation.features import get_extractor

                cache["extractor"] = get_extractor(ev.features, workdir=ev.feature_workdir)
            extractor = cache["extractor"]
            ref = reference(extractor)
            samples, labels = generate.generate(
                run,
                num=ev.num_samples,
                sampler=ev.sampler,
                steps=ev.steps,
                batch_size=ev.batch_size,
                seed=config.seed + int(step),
            )
            scores = sample_metrics(
                samples,
                extractor,
                ref,
                labels=labels,
                kid_subset_size=min(1000, ev.num_samples),
            )
            out.update({k: v for k, v in scores.items() if k != "num_samples"})
        if parallel.is_main_process():
            (workdir / "eval").mkdir(parents=True, exist_ok=True)
            with open(workdir / "eval" / "train_eval.jsonl", "a") as f:
                f.write(json.dumps({"step": int(step), **out}) + "\n")
        return out

    return eval_fn
