"""The feature-extractor protocol and the batching that every extractor shares.

    extract = BatchedExtractor("mine", 64, 10, fn, batch_size=round_up(256, local_mesh().size))
    feats, logits = extract(check_images(images_uint8))    # [N, 64], [N, 10] float64

Images are uint8 [N, H, W, C] as `generate.save_samples` writes them; FID, KID and
precision/recall use the features, the Inception Score the logits. Statistics are only comparable
between sets seen by the same extractor, so reference files record its ``name`` and `evaluate`
refuses a mismatch. The concrete extractors are in `features`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np


class FeatureExtractor(Protocol):
    name: str
    feature_dim: int
    num_logits: int

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def local_mesh() -> jax.sharding.Mesh:
    """A 1-D 'data' mesh over this process's devices (evaluation batches are per process)."""
    return jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))


def round_up(batch_size: int, multiple: int) -> int:
    return -(-batch_size // multiple) * multiple


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
    """Runs ``fn(uint8 [B, H, W, C]) -> (features [B, D], logits [B, K])`` (jitted, split over its
    devices) over N images in batches of exactly ``batch_size`` (the last padded), so one shape
    compiles for any N; N < ``batch_size`` is one batch of N rounded up to ``multiple`` (the device
    count). Batch k is dispatched before batch k - 1 is copied back, so the devices stay busy."""

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
        batch = min(self.batch_size, round_up(max(num, 1), self.multiple))
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
