"""Feature extractors for the sample-quality metrics: images in, (features, logits) out.

    extractor = features.get_extractor("inception")                    # FID's Inception-v3
    extractor = features.get_extractor("classifier", workdir="runs/digits_features")
    feats, logits = extractor(images_uint8)                            # [N, D], [N, K] float64

An extractor is anything with ``name``, ``feature_dim``, ``num_logits`` and
``__call__(images) -> (features, logits)``, where ``images`` are uint8 [N, H, W, C] as
`generate.save_samples` writes them. FID, KID and precision/recall use the features, the
Inception Score the logits. Statistics are only comparable between sets seen by the same extractor,
so reference files record its ``name`` and `evaluate` refuses a mismatch.

`BatchedExtractor` runs a jitted batch function over fixed-size batches (the last one padded, so
one shape compiles) with the batch split over every local device. `classifier_extractor` wraps a
`train-classifier` run (e.g. experiments/configs/digits_features.py): the CPU-scale experiments'
stand-in for Inception, which knows nothing of 8x8 digits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


class FeatureExtractor(Protocol):
    name: str
    feature_dim: int
    num_logits: int

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def local_mesh() -> jax.sharding.Mesh:
    """A 1-D 'data' mesh over this process's devices (evaluation batches are per process)."""
    return jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))


def check_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    """uint8 [N, H, W, C] with C in (1, 3), or a ValueError that says what is wrong."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"{what} must be [N, H, W, C] with C = 1 or 3 (NHWC, as `diffusion-jax sample` "
            f"writes them); got shape {images.shape}."
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"{what} must be uint8 in 0..255 (as `diffusion-jax sample` writes them); got "
            f"{images.dtype}. Convert floats in [-1, 1] with diffusion_jax.data.images.to_uint8."
        )
    return images


@dataclasses.dataclass(frozen=True)
class BatchedExtractor:
    """Runs ``fn(uint8 [B, H, W, C]) -> (features [B, D], logits [B, K])`` over N images.

    ``fn`` takes a host batch and splits it over its devices. Every call uses batches of exactly
    ``batch_size`` (the last one padded, the padding dropped), so one shape compiles for any N;
    N below ``batch_size`` is one batch of N rounded up to ``multiple`` (the device count). Batch
    k is dispatched before batch k - 1 is copied back, so the devices stay busy."""

    name: str
    feature_dim: int
    num_logits: int
    fn: Callable[[np.ndarray], tuple[Any, Any]]
    batch_size: int = 256
    multiple: int = 1
    progress: bool = False

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = check_images(images)
        num = len(images)
        batch = min(self.batch_size, -(-max(num, 1) // self.multiple) * self.multiple)
        feats = np.empty((num, self.feature_dim), np.float64)
        logits = np.empty((num, self.num_logits), np.float64)
        starts = range(0, num, batch)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"features ({self.name})", unit="batch")
        pending = []
        for start in starts:
            chunk = images[start : start + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.uint8)])
            pending.append((start, n, self.fn(chunk)))
            while len(pending) > 1 or (pending and start + batch >= num):
                done, n_done, (f, lg) = pending.pop(0)
                feats[done : done + n_done] = np.asarray(f)[:n_done]
                logits[done : done + n_done] = np.asarray(lg)[:n_done]
        return feats, logits


def round_up(batch_size: int, multiple: int) -> int:
    return -(-batch_size // multiple) * multiple


def classifier_extractor(
    workdir: str | Path, *, batch_size: int = 256, progress: bool = False
) -> BatchedExtractor:
    """The pooled features and logits of a `train-classifier` run at t = 0.

    Images are scaled to [-1, 1] as the data pipeline does; their shape must be the classifier's
    input shape (a ValueError says which it expects)."""
    from diffusion_jax.models.classifier import NoisyClassifier
    from diffusion_jax.training import classifier as classifier_train

    module, params = classifier_train.load_classifier(workdir)
    assert isinstance(module, NoisyClassifier)
    shape = _classifier_shape(workdir)
    feature_dim = module.ch * module.ch_mult[-1]

    @jax.jit
    def features_of(x_u8):
        if tuple(x_u8.shape[1:]) != shape:
            raise ValueError(
                f"The feature classifier in {workdir} takes images of shape {shape}; got "
                f"{tuple(x_u8.shape[1:])}."
            )
        x = x_u8.astype(jnp.float32) / 127.5 - 1.0
        t = jnp.zeros((x.shape[0],), jnp.int32)
        logits, feats = module.apply({"params": params}, x, t, return_features=True)
        return feats, logits

    mesh = local_mesh()
    sharding = NamedSharding(mesh, P("data"))
    name = f"classifier:{Path(workdir).resolve().name}"
    batch_size = round_up(batch_size, mesh.size)
    return BatchedExtractor(
        name,
        feature_dim,
        module.num_classes,
        lambda x: features_of(jax.device_put(x, sharding)),
        batch_size,
        mesh.size,
        progress,
    )


def _classifier_shape(workdir: str | Path) -> tuple[int, ...]:
    from diffusion_jax import checkpoint

    with checkpoint.Checkpointer(workdir, read_only=True) as ckpt:
        return tuple(ckpt.restore_config()["classifier"]["image_shape"])


EXTRACTORS = ("inception", "classifier")


def get_extractor(
    kind: str,
    *,
    workdir: str | Path | None = None,
    weights: str | Path | None = None,
    batch_size: int = 200,
    progress: bool = False,
) -> FeatureExtractor:
    """ "inception" (FID's Inception-v3; `weights` = the converted file, default cache path) or
    "classifier" (a train-classifier run in `workdir`)."""
    if kind == "inception":
        from diffusion_jax.evaluation import inception

        return inception.inception_extractor(weights, batch_size=batch_size, progress=progress)
    if kind == "classifier":
        if not workdir:
            raise ValueError(
                "Classifier features need the classifier's run directory: --feature_workdir "
                "runs/digits_features (train it with diffusion-jax train-classifier --config "
                "experiments/configs/digits_features.py --workdir runs/digits_features)."
            )
        return classifier_extractor(workdir, batch_size=batch_size, progress=progress)
    raise ValueError(f"Unknown feature extractor {kind!r}: use one of {EXTRACTORS}.")


def dataset_images(
    data_config: Any, *, split: str | None = None, batch_size: int = 256, max_images: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(uint8 images [B, H, W, C], labels [B] or None) of a dataset split, in order, as the model
    sees them (resized and cropped to `data.image_size`, no flips); at most `max_images` (0: all).
    Each process reads its own share of the split."""
    from diffusion_jax.data import pipeline as data

    seen = 0
    for batch in data.make_eval_iterator(data_config, batch_size=batch_size, split=split):
        x = np.asarray(batch["image"], np.float32)
        if x.ndim != 4:
            raise ValueError(
                f"Sample-quality metrics need images; dataset {data_config.dataset!r} has "
                f"examples of shape {x.shape[1:]}."
            )
        if max_images:
            x = x[: max_images - seen]
        u8 = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
        labels = batch.get("label")
        yield u8, (None if labels is None else np.asarray(labels)[: len(u8)])
        seen += len(u8)
        if max_images and seen >= max_images:
            return
