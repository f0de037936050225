"""Evaluating a run's sample quality as the papers do: metrics against reference statistics.

    extractor = features.get_extractor("inception")
    ref = evaluate.reference_statistics(extractor, data_config=config.data, split="train")
    evaluate.save_reference("cifar10_train.npz", ref)
    scores = evaluate.sample_metrics(samples_uint8, extractor, ref)   # fid, is, kid, precision..

`diffusion-jax ref-stats` and `evaluate` run these (the NLL bound in bits/dim: `evaluation.bpd`).
A `Reference` holds the mean and covariance of the extractor's features over a dataset split or
image folder, and optionally the features, which KID and precision/recall need (sets, not moments).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffusion_jax import parallel
from diffusion_jax.evaluation import metrics, precision_recall
from diffusion_jax.evaluation.extractor import FeatureExtractor, check_images
from diffusion_jax.evaluation.features import dataset_images

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
    """A `save_reference` file, or a published TTUR / clean-fid one (Inception, no features)."""
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


def cached_reference(
    extractor: FeatureExtractor, data_config: Any, workdir: str | Path, split: str | None = None
) -> Reference:
    """The reference of `data_config`'s `split` under `extractor`, read from
    workdir/eval/reference_<extractor>[_<split>].npz, or computed and written there (by the main
    process) on first use."""
    tag = extractor.name.replace(":", "_").replace("/", "_") + (f"_{split}" if split else "")
    path = Path(workdir) / "eval" / f"reference_{tag}.npz"
    if path.exists():
        return load_reference(path)
    ref = reference_statistics(extractor, data_config=data_config, split=split)
    if parallel.is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_reference(path, ref)
    return ref


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
    """`metrics_to_compute` (of METRICS) of uint8 `images` against `reference`: "is" needs none,
    "kid" and "pr" its features (ValueError for a published stats file). With `labels` and an
    extractor of those classes, also "class_accuracy" (how often its top class is the label)."""
    images = check_images(images, "samples")
    _check_request(metrics_to_compute, reference, extractor)
    feats, logits = extract_split(extractor, images)
    out: dict[str, float] = {"num_samples": float(len(images))}
    if "fid" in metrics_to_compute:
        mu, sigma = metrics.feature_statistics(feats)
        out["fid"] = metrics.frechet_distance(mu, sigma, reference.mu, reference.sigma)
    if "is" in metrics_to_compute:
        out["is"], out["is_std"] = metrics.inception_score(logits, splits=10)
    if "kid" in metrics_to_compute:
        out["kid"], out["kid_std"] = metrics.kernel_inception_distance(
            reference.features,
            feats,
            num_subsets=kid_subsets,
            subset_size=kid_subset_size,
            seed=seed,
        )
    if "pr" in metrics_to_compute:
        out["precision"], out["recall"] = precision_recall.precision_recall(
            reference.features, feats, k=pr_k
        )
    if labels is not None and len(labels) == len(images) and extractor.num_logits > 0:
        valid = labels >= 0
        if valid.any() and labels[valid].max() < extractor.num_logits:
            pred = np.argmax(logits, axis=-1)
            out["class_accuracy"] = float(np.mean(pred[valid] == labels[valid]))
    return {k: float(v) for k, v in out.items()}


def _check_request(names: Sequence[str], reference: Reference | None, extractor) -> None:
    """A ValueError, before any feature is computed, for metrics that cannot be computed."""
    unknown = set(names) - set(METRICS)
    if unknown:
        raise ValueError(f"Unknown metrics {sorted(unknown)}: choose from {METRICS}.")
    needs_ref = [m for m in names if m != "is"]
    if needs_ref and reference is None:
        raise ValueError(f"{needs_ref} compare against reference statistics: give a reference.")
    if reference is not None and reference.extractor and reference.extractor != extractor.name:
        raise ValueError(
            f"The reference statistics were computed with the {reference.extractor!r} features "
            f"but the samples go through {extractor.name!r}: statistics are only comparable "
            "under the same feature extractor. Recompute them with diffusion-jax ref-stats."
        )
    for name in ("kid", "pr"):
        if name in names and reference.features is None:
            raise ValueError(
                f"{name.upper()} compares sets of features, and the reference {reference.source} "
                "holds only their mean and covariance (a published statistics file?). Compute a "
                "reference with features: diffusion-jax ref-stats ... (features are kept unless "
                "--stats_only)."
            )


def extract_split(extractor: FeatureExtractor, images: np.ndarray):
    """`extractor(images)` split over the processes: each extracts its contiguous block, and the
    blocks are gathered once (every process gets all of them, in order)."""
    pc = jax.process_count()
    if pc == 1:
        return extractor(images)
    block = np.array_split(np.arange(len(images)), pc)[jax.process_index()]
    feats, logits = extractor(images[block[0] : block[-1] + 1] if len(block) else images[:0])
    return parallel.allgather_rows(feats), parallel.allgather_rows(logits)


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 images, labels or None) of a `diffusion-jax sample` .npz (arr_0) or .npy of images."""
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
