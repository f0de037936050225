"""Random-access data sources: TFDS (array_record), image folders, sklearn digits, 2-D toy data.

    from diffusion_jax.data import sources as data_sources
    source = data_sources.DigitsSource("train")      # len(source) == 1612
    source[0]  # {"image": uint8 [8, 8, 1], "label": 3}
    builder = data_sources.tfds_builder("cifar10", data_dir="")  # raises DatasetNotFoundError
    source = data_sources.TfdsSource(builder, "train")           #   when not prepared
    data_sources.prepare_data("cifar10")             # one-off download (needs TensorFlow)

Every source has `__len__` and `__getitem__(i) -> {"image": ..., "label": int}` (the protocol of
`grain.sources.RandomAccessDataSource`) and pickles cheaply: grain's spawned worker processes
receive it by pickle. Images are uint8 [H, W, C]; `toy2d` yields float32 [2] points. Preprocessing
(crop, resize, scaling to [-1, 1], flips) lives in `pipeline`. TFDS is read through
`builder.as_data_source` (array_record files, no TensorFlow import); only `prepare_data` needs it.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from diffusion_jax.errors import UserError

# Our dataset name -> the TFDS name (with config) it reads.
TFDS_NAMES = {
    "cifar10": "cifar10",
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "celeb_a_hq": "celeb_a_hq/256",
    "lsun/church_outdoor": "lsun/church_outdoor",
    "lsun/bedroom": "lsun/bedroom",
    "lsun/cat": "lsun/cat",
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# toy2d: 8 Gaussians on a circle. Radius + 4 std stays inside [-1, 1], the range of image data.
TOY2D_MODES = 8
TOY2D_RADIUS = 0.7
TOY2D_STD = 0.05
TOY2D_LENGTH = 100_000
_TOY2D_SPLIT_SEEDS = {"train": 0, "test": 1}


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is missing or unreadable; the message says where we looked and what to run."""


class ImageDecodeError(UserError, ValueError):
    """Image files do not decode; the message names them (and, for a folder, what to do)."""


class DataPreparationError(UserError, RuntimeError):
    """`prepare_data` could not prepare a TFDS dataset; the message says why and what to do."""


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crops uint8 [H, W, C] to a square and resizes it to [size, size, C] with PIL:
    shrinking uses BICUBIC with `reducing_gap=2`, so PIL first box-averages by an integer factor
    (anti-aliasing, like area resizing) and then resamples; enlarging uses BILINEAR."""
    height, width, channels = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(image)
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    if side > size:
        pil = pil.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    else:
        pil = pil.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(pil, dtype=np.uint8).reshape(size, size, channels)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file to uint8 [H, W, 3]; a corrupt file raises an error naming it."""
    try:
        with Image.open(path) as pil:
            return np.asarray(pil.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"Cannot decode image file {path}: {e}") from e


def tfds_builder(name: str, data_dir: str = ""):
    """The TFDS builder of our dataset `name`, checked to be prepared in the array_record format.
    Reads only its metadata (fast, offline); raises `DatasetNotFoundError`, saying which directory
    was searched and what to run, when the dataset is not there."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(TFDS_NAMES[name], data_dir=data_dir or None)
    if not builder.is_prepared():
        raise DatasetNotFoundError(_not_prepared_message(name, data_dir, builder))
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format != "array_record":
        # Random access (and so grain) needs array_record; tf.data's TFRecord files won't do.
        raise DatasetNotFoundError(
            f"Dataset {name!r} is prepared in {builder.data_dir} as {file_format}, but this "
            "library reads the array_record format. Prepare it again in another data_dir:\n"
            f"    diffusion-jax prepare-data {name} --data_dir NEW_DIR\n"
            "or delete that directory and run the command without --data_dir."
        )
    return builder


def _manual_dir(builder, manual_dir: str = "") -> Path:
    # TFDS's default: <data_dir>/downloads/manual (DatasetBuilder._make_download_manager).
    return Path(manual_dir) if manual_dir else Path(builder.data_dir_root) / "downloads" / "manual"


def _not_prepared_message(name: str, data_dir: str, builder) -> str:
    flag = f" --data_dir {data_dir}" if data_dir else ""
    message = (
        f"Dataset {name!r} (TFDS {TFDS_NAMES[name]!r}) is not prepared: searched "
        f"{builder.data_dir} (data_dir {builder.data_dir_root}"
        f"{'' if data_dir else ', the TFDS default; set config.data.data_dir to change it'}).\n"
    )
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        message += (
            f"{name!r} needs files you download yourself. Put them in "
            f"{_manual_dir(builder)} (the TFDS manual_dir), as TFDS describes:\n"
            f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}\nthen run:\n"
        )
    else:
        message += "Download and prepare it once (needs network) with:\n"
    return message + f"    diffusion-jax prepare-data {name}{flag}"


class TfdsSource:
    """A split of a prepared TFDS builder, as {"image": uint8 [H, W, C], "label": int}."""

    def __init__(self, builder, split: str):
        if split not in builder.info.splits:
            raise ValueError(
                f"{builder.name} has no split {split!r}; it has {sorted(builder.info.splits)}"
            )
        # Keep only the data source (not the builder): it is what worker processes unpickle.
        self._source = builder.as_data_source(split=split)
        self._has_label = "label" in builder.info.features

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        example = self._source[index]
        label = int(example["label"]) if self._has_label else 0
        return {"image": np.asarray(example["image"], np.uint8), "label": label}

    def __repr__(self) -> str:
        return f"TfdsSource({self._source!r})"


def prepare_data(name: str, data_dir: str = "", manual_dir: str = "") -> str:
    """Downloads and prepares TFDS dataset `name` in the array_record format; returns its dir.
    A no-op when already prepared. Needs network (or the manual files) and `tensorflow` (LSUN also
    `tensorflow-io`): TFDS encodes images with TensorFlow while writing; reading never needs it."""
    if name not in TFDS_NAMES:
        raise ValueError(
            f"prepare-data handles the TFDS datasets {sorted(TFDS_NAMES)}, not {name!r} "
            "(digits, toy2d and folder need no preparation)"
        )
    import tensorflow_datasets as tfds

    builder = tfds.builder(TFDS_NAMES[name], data_dir=data_dir or None)
    if builder.is_prepared():
        return str(tfds_builder(name, data_dir).data_dir)  # checks the file format
    missing = [m for m in ("tensorflow",) if importlib.util.find_spec(m) is None]
    if name.startswith("lsun/") and importlib.util.find_spec("tensorflow_io") is None:
        missing.append("tensorflow-io")
    if missing:
        raise DataPreparationError(
            f"Preparing {name!r} needs {' and '.join(missing)} (TFDS uses TensorFlow to encode "
            "images while writing the files; training reads them without it). Install it, "
            f'e.g. `pip install {" ".join(missing)}` (`pip install -e ".[prepare]"` installs '
            "TensorFlow), then run again."
        )
    download_config = tfds.download.DownloadConfig()
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        manual = _manual_dir(builder, manual_dir)
        if not manual.is_dir() or not any(manual.iterdir()):
            raise DataPreparationError(
                f"{name!r} needs files you download yourself; {manual} is empty or missing.\n"
                f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
            )
        download_config = tfds.download.DownloadConfig(manual_dir=str(manual))
    try:
        builder.download_and_prepare(file_format="array_record", download_config=download_config)
    except Exception as e:
        raise DataPreparationError(
            f"Preparing {name!r} in {builder.data_dir_root} failed: {type(e).__name__}: {e}\n"
            "Downloads need network access; a half-written dataset is left in an 'incomplete.*' "
            "directory that TFDS removes on the next attempt."
        ) from e
    return str(builder.data_dir)


class ImageFolderSource:
    """PNG/JPEG files under `root` (recursively), decoded to RGB uint8 [H, W, 3] (sizes vary). A
    file's label is the index of its first-level sub-folder among the sorted sub-folder names; with
    no sub-folders every image is class 0 (`num_classes == 0`: unlabelled)."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"Image folder {str(root)!r} does not exist; set config.data.folder to a "
                "directory of PNG/JPEG files (optionally one sub-folder per class)."
            )
        paths = sorted(
            p.relative_to(root)
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not paths:
            raise DatasetNotFoundError(
                f"Image folder {str(root)!r} contains no {'/'.join(IMAGE_EXTENSIONS)} files."
            )
        in_root = [p for p in paths if len(p.parts) == 1]
        self.classes = sorted({p.parts[0] for p in paths if len(p.parts) > 1})
        if self.classes and in_root:
            raise DatasetNotFoundError(
                f"Image folder {str(root)!r} mixes images in its root (e.g. {in_root[0]}) with "
                f"class sub-folders {self.classes[:5]}; move the root images into a sub-folder."
            )
        index = {name: i for i, name in enumerate(self.classes)}
        self.root = str(root)
        self.files = [str(p) for p in paths]
        self.labels = [index[p.parts[0]] if len(p.parts) > 1 else 0 for p in paths]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def without(self, files: Iterable[str]) -> ImageFolderSource:
        """This source less `files` (names as in `self.files`); the classes, and the labels of the
        files kept, stay as they were."""
        drop = set(files)
        kept = [i for i, name in enumerate(self.files) if name not in drop]
        if not kept:
            raise DatasetNotFoundError(
                f"Image folder {self.root!r}: all {len(self)} image files are left out; none "
                "remains to read."
            )
        other = copy.copy(self)
        other.files = [self.files[i] for i in kept]
        other.labels = [self.labels[i] for i in kept]
        return other

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        image = load_rgb(os.path.join(self.root, self.files[index]))
        return {"image": image, "label": self.labels[index]}

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.root!r}, {len(self)} images, {self.num_classes} classes)"


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target  # [1797, 8, 8] float64 in 0..16, [1797] int


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into `sklearn.datasets.load_digits()` of our fixed split: test is every 10th example
    of each class in dataset order (the 1st, 11th, ...), 185 test and 1,612 train images. A rule,
    not a random draw, so it cannot change with library versions."""
    target = _load_digits()[1]
    is_test = np.zeros(len(target), bool)
    for c in range(10):
        is_test[np.flatnonzero(target == c)[::10]] = True
    if split not in ("train", "test"):
        raise ValueError(f"digits has the splits 'train' and 'test', not {split!r}")
    return np.flatnonzero(is_test if split == "test" else ~is_test)


class DigitsSource:
    """scikit-learn's bundled 8x8 digits as uint8 [8, 8, 1] (values 0..16 scaled to 0..255)."""

    def __init__(self, split: str = "train"):
        images, target = _load_digits()
        self.indices = digits_split_indices(split)
        images = np.round(images[self.indices] * (255.0 / 16.0))
        self.images = images.astype(np.uint8)[..., None]  # [N, 8, 8, 1]
        self.labels = target[self.indices].astype(np.int64)  # [N]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": int(self.labels[index])}


def _toy2d_draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    modes = rng.integers(TOY2D_MODES, size=n)  # [n]
    angles = 2 * np.pi * modes / TOY2D_MODES
    centres = TOY2D_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # [n, 2]
    points = centres + TOY2D_STD * rng.standard_normal((n, 2))
    return points.astype(np.float32), modes


def sample_toy2d(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` fresh draws, float32 [n, 2], from the true toy2d mixture (8 Gaussians on a circle)."""
    return _toy2d_draw(rng, n)[0]


class Toy2dSource:
    """A fixed-length sample of the toy2d mixture; item i is drawn with the seed (split, i)."""

    def __init__(self, split: str = "train", length: int = TOY2D_LENGTH):
        if split not in _TOY2D_SPLIT_SEEDS:
            raise ValueError(f"toy2d has the splits {sorted(_TOY2D_SPLIT_SEEDS)}, not {split!r}")
        self._seed = _TOY2D_SPLIT_SEEDS[split]
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        points, modes = _toy2d_draw(np.random.default_rng([self._seed, index]), 1)
        return {"image": points[0], "label": int(modes[0])}  # label: the mixture component
