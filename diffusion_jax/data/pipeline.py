"""Input pipelines: the dataset named by `config.data` -> grain -> host-local numpy batches.

    from diffusion_jax.data import pipeline as data
    info = data.dataset_info(config.data)   # DatasetInfo(name="digits", shape=(8, 8, 1), ...)
    it = data.make_train_iterator(config.data, global_batch_size=128, seed=config.seed)
    batch = next(it)  # {"image": float32 [128 // process_count, 8, 8, 1] in [-1, 1],
                      #  "label": int32 [128 // process_count]}  (label only with use_labels)
    state = it.get_state()                  # a small JSON-able dict; it.set_state(state) resumes
    for batch in data.make_eval_iterator(config.data, batch_size=256):  # one pass, in order
        ...
    # checkpointing with orbax (grain registers its handler for these argument types):
    manager.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it), ...))
    manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it)))

The training pipeline is a `grain.MapDataset` (random access, so its position is one integer):
source -> seed(seed) -> shuffle -> repeat -> preprocess -> random flip -> batch(B / P) ->
[host::hosts]. The shuffle is a permutation of the whole dataset, new in each epoch (grain folds
the epoch into the seed); the flip randomness is a function of the seed and the example's position
in that global order. Global batch b is positions [b * B, (b + 1) * B) of that order, in order,
whatever the number of hosts P: host p reads only its contiguous block of B / P (the rows its
devices hold), so hosts never read the same example within an epoch, and the training run depends
only on the seed (2 hosts of 4 devices compute what one host of 8 does). Datasets: see `DATASETS`;
an image folder is decoded once per process before its first use (`check.checked_source`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any

import grain
import numpy as np

from diffusion_jax.data.check import checked_source
from diffusion_jax.data.sources import (
    TFDS_NAMES,
    TOY2D_LENGTH,
    DataPreparationError,
    DatasetNotFoundError,
    DigitsSource,
    ImageDecodeError,
    ImageFolderSource,
    TfdsSource,
    Toy2dSource,
    center_crop_resize,
    digits_split_indices,
    prepare_data,
    sample_toy2d,
    tfds_builder,
)

__all__ = [
    "DATASETS",
    "DataPreparationError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageDecodeError",
    "dataset_info",
    "example_shape",
    "make_eval_iterator",
    "make_train_iterator",
    "open_source",
    "prepare_data",
    "sample_toy2d",
]

DATASETS = ("digits", "toy2d", "folder", *TFDS_NAMES)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, after preprocessing."""

    name: str
    shape: tuple[int, ...]  # one preprocessed example: (H, W, C), or (2,) for toy2d
    num_classes: int  # 0: unlabelled
    split_sizes: tuple[tuple[str, int], ...]  # ((split, number of examples), ...)
    eval_split: str  # the held-out split make_eval_iterator reads by default

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.split_sizes)

    def num_examples(self, split: str = "train") -> int:
        sizes = dict(self.split_sizes)
        if split not in sizes:
            raise ValueError(f"{self.name} has no split {split!r}; it has {self.splits}")
        return sizes[split]


def _get(data_config: Any, key: str, default: Any) -> Any:
    # Accept any object with the keys of config.data (a ConfigDict, a namespace, a dataclass).
    return getattr(data_config, key, default)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASETS}.{hint}")


def _image_shape(name: str, height, width, channels: int, image_size: int) -> tuple[int, ...]:
    if image_size:
        return (image_size, image_size, channels)
    if height is None or width is None:
        raise ValueError(
            f"{name!r} images differ in size; set config.data.image_size (e.g. 64 or 256)."
        )
    return (height, width, channels)


def dataset_info(data_config: Any) -> DatasetInfo:
    """Shape, classes and split sizes of `data_config.dataset`. For TFDS datasets this reads the
    prepared builder's metadata and raises `DatasetNotFoundError` (with the command to run) when
    the dataset is not prepared; for a folder, the first call in a process decodes every image
    (`check.checked_source`: unreadable files raise `ImageDecodeError` or are left out)."""
    name = _get(data_config, "dataset", "digits")
    image_size = int(_get(data_config, "image_size", 0))
    _check_name(name)
    if name == "digits":
        sizes = tuple((s, len(digits_split_indices(s))) for s in ("train", "test"))
        return DatasetInfo(name, _image_shape(name, 8, 8, 1, image_size), 10, sizes, "test")
    if name == "toy2d":
        sizes = (("train", TOY2D_LENGTH), ("test", TOY2D_LENGTH))
        return DatasetInfo(name, (2,), 8, sizes, "test")
    if name == "folder":
        source = _folder_source(data_config)
        shape = _image_shape(name, None, None, 3, image_size)
        return DatasetInfo(name, shape, source.num_classes, (("train", len(source)),), "train")
    builder = tfds_builder(name, _get(data_config, "data_dir", ""))
    features = builder.info.features
    height, width, channels = features["image"].shape
    num_classes = features["label"].num_classes if "label" in features else 0
    sizes = tuple((str(s), int(v.num_examples)) for s, v in sorted(builder.info.splits.items()))
    splits = [s for s, _ in sizes]
    eval_split = next(s for s in ("test", "validation", "train") if s in splits)
    shape = _image_shape(name, height, width, channels, image_size)
    return DatasetInfo(name, shape, num_classes, sizes, eval_split)


# Native shapes of the TFDS datasets: a trained or imported run samples without its data prepared.
_TFDS_SHAPES = {
    "cifar10": (32, 32, 3),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "celeb_a_hq": (256, 256, 3),
    "lsun/church_outdoor": (None, None, 3),
    "lsun/bedroom": (None, None, 3),
    "lsun/cat": (None, None, 3),
}


def example_shape(data_config: Any) -> tuple[int, ...]:
    """The shape of one preprocessed example: `dataset_info(...).shape`, except that a TFDS
    dataset or image folder need not be there (sampling a run needs its shape, not its data)."""
    name = _get(data_config, "dataset", "digits")
    if name == "folder":
        return _image_shape(name, None, None, 3, int(_get(data_config, "image_size", 0)))
    if name in _TFDS_SHAPES:
        height, width, channels = _TFDS_SHAPES[name]
        return _image_shape(name, height, width, channels, int(_get(data_config, "image_size", 0)))
    return dataset_info(data_config).shape


def _folder_source(data_config: Any) -> ImageFolderSource:
    folder = _get(data_config, "folder", "")
    if not folder:
        raise ValueError("dataset 'folder' reads config.data.folder, which is not set.")
    source = ImageFolderSource(folder)  # a missing or empty folder fails here, first
    image_size = int(_get(data_config, "image_size", 0))
    _image_shape("folder", None, None, 3, image_size)  # then a missing image_size, before decoding
    skip_unreadable = bool(_get(data_config, "skip_unreadable", False))
    return checked_source(source, image_size=image_size, skip_unreadable=skip_unreadable)


def open_source(data_config: Any, split: str = "train"):
    """The random-access source of `split` (uint8 images, or float32 points for toy2d)."""
    name = _get(data_config, "dataset", "digits")
    _check_name(name)
    if name == "digits":
        return DigitsSource(split)
    if name == "toy2d":
        return Toy2dSource(split)
    if name == "folder":
        if split != "train":
            raise ValueError(f"An image folder has only the split 'train', not {split!r}.")
        return _folder_source(data_config)
    return TfdsSource(tfds_builder(name, _get(data_config, "data_dir", "")), split)


# Transform classes, not lambdas: grain's worker processes receive them by pickle.
@dataclasses.dataclass(frozen=True)
class Preprocess(grain.transforms.Map):
    """uint8 [H, W, C] -> centre-crop/resize to image_size -> float32 in [-1, 1]; label: int32."""

    image_size: int = 0
    use_labels: bool = False

    def map(self, example: dict) -> dict:
        image = example["image"]
        if image.dtype == np.uint8:  # toy2d points are float32 already, in [-1, 1]
            size = self.image_size
            if size and image.shape[:2] != (size, size):
                image = center_crop_resize(image, size)
            image = image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        out = {"image": image}
        if self.use_labels:
            out["label"] = np.int32(example["label"])
        return out


class RandomFlip(grain.transforms.RandomMap):
    """Mirrors the image left-right with probability 1/2 (the generator is grain's, per index)."""

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        if rng.random() < 0.5:
            example = {**example, "image": np.ascontiguousarray(example["image"][:, ::-1])}
        return example


def _preprocessed(data_config: Any, source) -> tuple[grain.MapDataset, Preprocess]:
    info = dataset_info(data_config)
    use_labels = bool(_get(data_config, "use_labels", False))
    if use_labels and info.num_classes == 0:
        raise ValueError(
            f"config.data.use_labels is set but {info.name!r} has no labels"
            + (" (its images are not in class sub-folders)." if info.name == "folder" else ".")
        )
    image_size = int(_get(data_config, "image_size", 0))
    return grain.MapDataset.source(source), Preprocess(image_size, use_labels)


def _hosts(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only here: worker processes unpickling this module need not import JAX

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return process_index, process_count


def _iterator(ds: grain.MapDataset, data_config: Any, source) -> grain.DatasetIterator:
    # In-memory sources gain nothing from reader threads (the GIL); decoding sources do. The
    # buffer counts batches, so it stays small to bound memory.
    in_memory = isinstance(source, DigitsSource | Toy2dSource)
    threads = 0 if in_memory else min(8, os.cpu_count() or 1)
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, 2 * threads))
    ids = ds.to_iter_dataset(read)
    num_workers = int(_get(data_config, "num_workers", 0))
    if num_workers > 0:
        from absl import flags

        # grain's worker start-up reads its absl flags, which raises unless flags were parsed
        # (absl.app does that; our argparse CLI and pytest do not): keep their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(ids)


def make_train_iterator(
    data_config: Any,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    split: str = "train",
) -> grain.DatasetIterator:
    """An endless, shuffled, checkpointable iterator of this host's share of each global batch:
    {"image": float32 [global_batch_size // process_count, *info.shape], "label": int32
    [global_batch_size // process_count]} (label only with use_labels). Deterministic given `seed`
    (a non-negative int); `process_index` / `process_count` default to JAX's."""
    process_index, process_count = _hosts(process_index, process_count)
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the number of "
            f"hosts ({process_count}); set config.training.batch_size to a multiple of "
            f"{process_count}."
        )
    if seed < 0:
        raise ValueError(f"The data seed must be a non-negative integer, got {seed}.")
    if _get(data_config, "random_flip", False) and _get(data_config, "dataset", "") == "toy2d":
        raise ValueError("config.data.random_flip mirrors images; toy2d has 2-D points.")
    source = open_source(data_config, split)
    ds, preprocess = _preprocessed(data_config, source)
    ds = ds.seed(seed).shuffle().repeat().map(preprocess)
    if _get(data_config, "random_flip", False):
        ds = ds.random_map(RandomFlip())
    # Blocks of B / P examples: global batch b is blocks b * P .. b * P + P - 1, and host p reads
    # block b * P + p, the rows its devices hold (parallel.global_batch).
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    ds = ds[process_index::process_count]
    return _iterator(ds, data_config, source)


def make_eval_iterator(
    data_config: Any,
    *,
    batch_size: int,
    split: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool = False,
) -> grain.DatasetIterator:
    """One pass over `split` in dataset order: no shuffle, no flip; the last batch may be short.
    `split=None` is the held-out split (`dataset_info(...).eval_split`: "test", else "validation",
    else "train"). With several hosts each reads every `process_count`-th example."""
    process_index, process_count = _hosts(process_index, process_count)
    if split is None:
        split = dataset_info(data_config).eval_split
    source = open_source(data_config, split)
    ds, preprocess = _preprocessed(data_config, source)
    ds = ds.map(preprocess)[process_index::process_count]
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return _iterator(ds, data_config, source)
