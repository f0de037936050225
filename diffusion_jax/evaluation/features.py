"""The feature extractors of the sample-quality metrics: images in, (features, logits) out.

    extractor = features.get_extractor("inception")                    # FID's Inception-v3
    extractor = features.get_extractor("classifier", workdir="runs/digits_features")
    feats, logits = extractor(images_uint8)                            # [N, D], [N, K] float64
    for images, labels in features.dataset_images(config.data, split="train"): ...

Both are `extractor.BatchedExtractor`s. A classifier (e.g. configs/digits_features.py) is the
CPU-scale experiments' stand-in for Inception, which knows nothing of 8x8 digits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from diffusion_jax.evaluation import inception
from diffusion_jax.evaluation.extractor import (
    BatchedExtractor,
    FeatureExtractor,
    local_mesh,
    round_up,
)
from diffusion_jax.evaluation.inception_weights import load_inception
from diffusion_jax.sampling import runs


def inception_extractor(
    path: str | os.PathLike | None = None,
    batch_size: int = 200,
    *,
    progress: bool = False,
    devices=None,
) -> BatchedExtractor:
    """FID's Inception-v3 with pytorch-fid's weights (`load_inception(path)`), each batch split over
    `devices` (default: this process's); `batch_size` is rounded up to a multiple of their count."""
    module, variables = load_inception(path)
    devices = jax.local_devices() if devices is None else list(devices)
    fn = inception.make_inception_fn(module, variables, devices=devices)
    dims, n = (inception.FEATURE_DIM, inception.NUM_LOGITS), len(devices)
    return BatchedExtractor("inception-fid", *dims, fn, round_up(batch_size, n), n, progress)


def classifier_extractor(
    workdir: str | Path, *, batch_size: int = 256, progress: bool = False
) -> BatchedExtractor:
    """The pooled features and logits at t = 0 of a `train-classifier` run, of images scaled to
    [-1, 1] as the data pipeline does, in the classifier's input shape (else a ValueError)."""
    module, params = runs.load_classifier(workdir)
    with runs.open_run(workdir, "train-classifier") as ckpt:
        shape = tuple(ckpt.restore_config()["classifier"]["image_shape"])
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
        return inception_extractor(weights, batch_size=batch_size, progress=progress)
    if kind == "classifier":
        if not workdir:
            raise ValueError(
                "Classifier features need the classifier's run directory: --feature_workdir "
                "runs/digits_features (train it with diffusion-jax train-classifier --config "
                "diffusion_jax/configs/digits_features.py --workdir runs/digits_features)."
            )
        return classifier_extractor(workdir, batch_size=batch_size, progress=progress)
    raise ValueError(f"Unknown feature extractor {kind!r}: use one of {EXTRACTORS}.")


def dataset_images(
    data_config: Any, *, split: str | None = None, batch_size: int = 256, max_images: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(uint8 images [B, H, W, C], labels [B] or None) of this process's share of a split, in order,
    as the model sees them (resized, cropped, no flips); at most `max_images` (0: all)."""
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
