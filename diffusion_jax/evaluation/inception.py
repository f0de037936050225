"""The FID Inception-v3 network in Flax, with pytorch-fid's published weights.

    diffusion-jax fetch-inception                  # once: download + convert (needs torch)
    extract = inception.inception_extractor()      # reads ~/.cache/diffusion_jax/inception_fid.npz
    features, logits = extract(images_uint8)       # [N, 2048] pool features, [N, 1008] logits

The network is the 2015-12-05 TensorFlow Inception graph that TTUR's FID, the DDPM paper and
pytorch-fid use (pytorch-fid's `FIDInceptionV3`): torchvision's Inception-v3 with the FID-specific
blocks (average pools that ignore padding, a max pool in the last block's pool branch) and a
1008-way classifier. Images in [0, 255] of any size are resized to 299x299 as pytorch-fid does
(bilinear, half-pixel centres, no antialiasing) and scaled to [-1, 1]. BatchNorm uses its running
statistics: the network is only ever evaluated.

The weights come from pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`: `fetch_inception`
checks its sha256, converts it with `convert_state_dict` (plain numpy; reading the .pth needs
torch) and writes an .npz that `load_inception` reads without torch.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffusion_jax import parallel
from diffusion_jax.evaluation.features import BatchedExtractor, round_up

WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# torch-hub convention: the hex digits in the file name are a prefix of the file's sha256.
WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
_META = "__meta__/"  # .npz entries under this prefix are metadata, not variables
_FORMAT_VERSION = 1


class InceptionWeightsNotFoundError(FileNotFoundError):
    """The converted Inception weights are not where they were looked for."""


class InceptionWeightsError(RuntimeError):
    """Getting or converting the weights failed (network, hash, torch missing, bad file)."""


# ---------------------------------------------------------------------------------------------
# The network


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps=0.001, running statistics) + ReLU."""

    features: int
    kernel_size: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: tuple[int, int] = (0, 0)  # (rows, columns), symmetric as in torch
    dtype: Any = jnp.float32
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            dtype=self.dtype,
            precision=self.precision,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    # TensorFlow's average pool leaves the padded zeros out of the mean (count_include_pad=False).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
    dtype: Any = jnp.float32
    precision: Any = jax.lax.Precision.HIGHEST

    def conv(self, name, features, kernel_size=(1, 1), strides=1, padding=(0, 0)):
        return BasicConv2d(
            features, kernel_size, strides, padding, self.dtype, self.precision, name=name
        )


class FIDInceptionA(_Block):
    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 64)(x)
        b5 = self.conv("branch5x5_1", 48)(x)
        b5 = self.conv("branch5x5_2", 64, (5, 5), padding=(2, 2))(b5)
        b3 = self.conv("branch3x3dbl_1", 64)(x)
        b3 = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(b3)
        b3 = self.conv("branch3x3dbl_3", 96, (3, 3), padding=(1, 1))(b3)
        bp = self.conv("branch_pool", self.pool_features)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3", 384, (3, 3), strides=2)(x)
        bd = self.conv("branch3x3dbl_1", 64)(x)
        bd = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(bd)
        bd = self.conv("branch3x3dbl_3", 96, (3, 3), strides=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionC(_Block):
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = self.conv("branch1x1", 192)(x)
        b7 = self.conv("branch7x7_1", c7)(x)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = self.conv("branch7x7dbl_1", c7)(x)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = self.conv("branch_pool", 192)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3_1", 192)(x)
        b3 = self.conv("branch3x3_2", 320, (3, 3), strides=2)(b3)
        b7 = self.conv("branch7x7x3_1", 192)(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, (3, 3), strides=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionE(_Block):
    """FIDInceptionE_1 (average pool without padding) or, with max_pool, FIDInceptionE_2.

    The 2015 graph's last block pools with a max pool where the paper has an average pool."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 320)(x)
        b3 = self.conv("branch3x3_1", 384)(x)
        b3 = jnp.concatenate(
            [
                self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3),
            ],
            axis=-1,
        )
        bd = self.conv("branch3x3dbl_1", 448)(x)
        bd = self.conv("branch3x3dbl_2", 384, (3, 3), padding=(1, 1))(bd)
        bd = jnp.concatenate(
            [
                self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd),
            ],
            axis=-1,
        )
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = self.conv("branch_pool", 192)(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """[B, H, W, C] float -> [B, size, size, C], as torch's F.interpolate(mode="bilinear",
    align_corners=False): half-pixel centres, edge pixels repeated, no antialiasing when
    shrinking (pytorch-fid's resize)."""
    b, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    return jax.image.resize(images, (b, size, size, c), method="linear", antialias=False)


class FIDInceptionV3(nn.Module):
    """images [B, H, W, 3] in [0, 255] -> (pool [B, 2048], logits [B, 1008]), both float32.

    Submodule names follow the torch state dict (Conv2d_1a_3x3, Mixed_5b, ...), so the
    conversion is a renaming. `precision` applies to the convolutions and the classifier; the
    default (highest) keeps GPUs from computing float32 convolutions in TF32."""

    dtype: Any = jnp.float32
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, images):
        kw = dict(dtype=self.dtype, precision=self.precision)
        x = jnp.asarray(images, jnp.float32) / 255.0
        x = resize_bilinear(x, INPUT_SIZE)  # pytorch-fid resizes [0, 1] images
        x = (2.0 * x - 1.0).astype(self.dtype)  # [B, 299, 299, 3] in [-1, 1]
        x = BasicConv2d(32, (3, 3), 2, **kw, name="Conv2d_1a_3x3")(x)  # [B, 149, 149, 32]
        x = BasicConv2d(32, (3, 3), **kw, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), **kw, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_stride2(x)  # [B, 73, 73, 64]
        x = BasicConv2d(80, (1, 1), **kw, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), **kw, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride2(x)  # [B, 35, 35, 192]
        x = FIDInceptionA(**kw, pool_features=32, name="Mixed_5b")(x)
        x = FIDInceptionA(**kw, pool_features=64, name="Mixed_5c")(x)
        x = FIDInceptionA(**kw, pool_features=64, name="Mixed_5d")(x)  # [B, 35, 35, 288]
        x = InceptionB(**kw, name="Mixed_6a")(x)  # [B, 17, 17, 768]
        x = FIDInceptionC(**kw, channels_7x7=128, name="Mixed_6b")(x)
        x = FIDInceptionC(**kw, channels_7x7=160, name="Mixed_6c")(x)
        x = FIDInceptionC(**kw, channels_7x7=160, name="Mixed_6d")(x)
        x = FIDInceptionC(**kw, channels_7x7=192, name="Mixed_6e")(x)
        x = InceptionD(**kw, name="Mixed_7a")(x)  # [B, 8, 8, 1280]
        x = FIDInceptionE(**kw, max_pool=False, name="Mixed_7b")(x)
        x = FIDInceptionE(**kw, max_pool=True, name="Mixed_7c")(x)  # [B, 8, 8, 2048]
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, 2048]
        logits = nn.Dense(NUM_LOGITS, precision=self.precision, name="fc")(pool)  # [B, 1008]
        return pool, logits.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Weight conversion


def variable_shapes() -> dict[str, tuple[int, ...]]:
    """{"params/Mixed_5b/branch1x1/conv/kernel": shape, ...} for every Flax leaf."""
    return dict(_variable_shapes())


@functools.cache
def _variable_shapes() -> dict[str, tuple[int, ...]]:
    images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    tree = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), images)  # traced, not run
    return {k: tuple(v.shape) for k, v in _flatten(tree).items()}


def _flatten(tree: Mapping) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(tree), sep="/")


def _unflatten(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _flax_key(torch_key: str) -> tuple[str | None, Callable[[np.ndarray], np.ndarray] | None]:
    """torch state-dict key -> (Flax leaf key, transform), (None, None) when ignored, or
    raises KeyError when no rule applies."""
    *path, leaf = torch_key.split(".")
    owner = path[-1] if path else ""
    modules = "/".join(path)
    if owner == "conv" and leaf == "weight":
        return f"params/{modules}/kernel", lambda w: w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if owner == "bn":
        if leaf == "num_batches_tracked":  # a training counter: eval-mode BN never reads it
            return None, None
        collection, name = {
            "weight": ("params", "scale"),
            "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"),
            "running_var": ("batch_stats", "var"),
        }.get(leaf, (None, None))
        if name is not None:
            return f"{collection}/{modules}/{name}", lambda a: a
    if path == ["fc"] and leaf == "weight":
        return "params/fc/kernel", lambda w: w.T  # [out, in] -> [in, out]
    if path == ["fc"] and leaf == "bias":
        return "params/fc/bias", lambda a: a
    raise KeyError(torch_key)


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
    """pytorch-fid's FIDInceptionV3 state dict (numpy arrays) -> {"params", "batch_stats"}.

    Every tensor must fill exactly one Flax leaf and every leaf must be filled; BatchNorm's
    `num_batches_tracked` counters (absent from older files) are dropped. Conv weights go from
    OIHW to HWIO and the classifier's weight is transposed. Raises ValueError naming every
    unexpected, missing or misshapen key."""
    expected = _variable_shapes()
    flat: dict[str, np.ndarray] = {}
    unexpected, misshapen, misshapen_keys = [], [], set()
    bn_modules = {k.rsplit("/", 1)[0] for k in expected if k.endswith("/bn/scale")}
    for key, value in state_dict.items():
        try:
            flax_key, transform = _flax_key(key)
        except KeyError:
            unexpected.append(key)
            continue
        if flax_key is None:
            # A counter is consumed only if its BatchNorm exists.
            if "params/" + "/".join(key.split(".")[:-1]) not in bn_modules:
                unexpected.append(key)
            continue
        if flax_key not in expected:
            unexpected.append(key)
            continue
        array = transform(np.asarray(value))
        if array.shape != expected[flax_key]:
            torch_shape = tuple(np.shape(value))
            want = expected[flax_key]
            misshapen.append(f"{key} {torch_shape} (-> {flax_key} {array.shape}, want {want})")
            misshapen_keys.add(flax_key)
            continue
        flat[flax_key] = np.ascontiguousarray(array, dtype=np.float32)
    missing = set(expected) - set(flat) - misshapen_keys
    if unexpected or misshapen or missing:
        problems = []
        if unexpected:
            problems.append(f"unexpected keys: {_listing(unexpected)}")
        if missing:
            problems.append(f"missing keys: {_listing(_torch_names(missing))}")
        if misshapen:
            problems.append(f"wrong shapes: {_listing(misshapen)}")
        raise ValueError(
            "This state dict is not pytorch-fid's FIDInceptionV3 (pt_inception-2015-12-05): "
            + "; ".join(problems)
        )
    return _unflatten(flat)


def _torch_names(flax_keys) -> list[str]:
    """The torch keys that would have filled these Flax leaves (for error messages)."""
    torch_leaf = {
        "kernel": "weight",
        "scale": "weight",
        "mean": "running_mean",
        "var": "running_var",
    }
    names = []
    for key in flax_keys:
        _, *path, leaf = key.split("/")
        names.append(".".join([*path, torch_leaf.get(leaf, leaf)]))
    return names


# ---------------------------------------------------------------------------------------------
# Fetching, saving and loading


def default_weights_path() -> Path:
    """$DIFFUSION_JAX_CACHE/inception_fid.npz, else ~/.cache/diffusion_jax/inception_fid.npz."""
    cache = os.environ.get("DIFFUSION_JAX_CACHE")
    root = Path(cache) if cache else Path.home() / ".cache" / "diffusion_jax"
    return root / "inception_fid.npz"


def _how_to_fetch(out: Path | None = None) -> str:
    out_flag = "" if out is None or out == default_weights_path() else f" --out {out}"
    return (
        f"Run `diffusion-jax fetch-inception{out_flag}` to download pytorch-fid's weights "
        f"({WEIGHTS_URL}) and convert them (needs torch: `pip install torch`); on a machine "
        f"without network, download that file elsewhere, copy it here and run "
        f"`diffusion-jax fetch-inception --from {WEIGHTS_FILENAME}{out_flag}`."
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError) as e:
        raise InceptionWeightsError(
            f"Could not download {url} ({e}). Download it on a machine with network access, "
            f"copy it here and run `diffusion-jax fetch-inception --from {WEIGHTS_FILENAME}` "
            f"(or call fetch_inception(src=...))."
        ) from e


def _read_torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise InceptionWeightsError(
            f"Reading {path.name} (a torch file) needs PyTorch, only for this one-off "
            f"conversion: `pip install torch` (the CPU build is enough), then run "
            f"`diffusion-jax fetch-inception` again. Loading the converted weights does not."
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, an HTML error page, ...
        raise InceptionWeightsError(f"Could not read {path} with torch.load: {e}") from e
    if not isinstance(state, Mapping):
        raise InceptionWeightsError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return {k: np.asarray(v) for k, v in state.items()}


def _atomic_savez(out: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes a temporary file next to `out` and renames it: `out` is whole or absent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is for every user
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_inception(
    src: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    check_hash: bool = True,
) -> Path:
    """Converts pytorch-fid's .pth (downloaded when `src` is None) into an .npz at `out`
    (default `default_weights_path()`) and returns its path.

    The source's sha256 must start with 6726825d (unless check_hash=False). Reading the .pth
    needs torch; the written file does not. The .npz holds the variables under "/"-joined keys
    ("params/Mixed_5b/branch1x1/conv/kernel") and metadata under "__meta__/"."""
    out = Path(out) if out is not None else default_weights_path()
    with tempfile.TemporaryDirectory() as tmp_dir:
        if src is None:
            path = Path(tmp_dir) / WEIGHTS_FILENAME
            print(f"Downloading {WEIGHTS_URL}", file=sys.stderr)
            _download(WEIGHTS_URL, path)
            source_name = WEIGHTS_URL
        else:
            path = Path(src)
            if not path.is_file():
                raise InceptionWeightsNotFoundError(f"No such file: {path}. {_how_to_fetch()}")
            source_name = path.name
        sha256 = _sha256(path)
        if check_hash and not sha256.startswith(WEIGHTS_SHA256_PREFIX):
            raise InceptionWeightsError(
                f"{source_name} has sha256 {sha256}, but pytorch-fid's {WEIGHTS_FILENAME} starts "
                f"with {WEIGHTS_SHA256_PREFIX}: a different or damaged file. Download it again "
                f"from {WEIGHTS_URL}."
            )
        state_dict = _read_torch_state_dict(path)
    try:
        variables = convert_state_dict(state_dict)
    except ValueError as e:
        raise InceptionWeightsError(f"{source_name}: {e}") from e
    arrays = dict(_flatten(variables))
    arrays[_META + "source"] = np.array(source_name)
    arrays[_META + "source_sha256"] = np.array(sha256)
    arrays[_META + "format_version"] = np.array(_FORMAT_VERSION)
    _atomic_savez(out, arrays)
    return out


def load_inception(path: str | os.PathLike | None = None) -> tuple[FIDInceptionV3, dict]:
    """(module, variables) from the .npz that `fetch_inception` wrote (default path:
    `default_weights_path()`). Raises InceptionWeightsNotFoundError saying how to get it."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise InceptionWeightsNotFoundError(
            f"No Inception weights at {path}. {_how_to_fetch(path)}"
        )
    with np.load(path, allow_pickle=False) as data:
        flat = {k: data[k] for k in data.files if not k.startswith(_META)}
    expected = _variable_shapes()
    wrong = [
        f"{k} {flat[k].shape if k in flat else 'absent'} (want {v})"
        for k, v in expected.items()
        if k not in flat or flat[k].shape != v
    ]
    wrong += [f"{k} (unexpected)" for k in flat if k not in expected]
    if wrong:
        raise InceptionWeightsError(
            f"{path} does not hold the FID Inception variables: {_listing(wrong)}. Delete it and "
            f"run `diffusion-jax fetch-inception` again."
        )
    return FIDInceptionV3(), _unflatten(flat)


def fetch_inception_main(argv: list[str]) -> int:
    """`diffusion-jax fetch-inception [--from FILE] [--out PATH] [--no_hash_check]`."""
    parser = argparse.ArgumentParser(
        prog="diffusion-jax fetch-inception",
        description="Download pytorch-fid's FID Inception weights (or take a downloaded copy) "
        "and convert them for diffusion_jax. Needs torch to read the .pth file.",
    )
    parser.add_argument(
        "--from",
        dest="src",
        default=None,
        metavar="FILE",
        help=f"an already downloaded {WEIGHTS_FILENAME} (default: download {WEIGHTS_URL})",
    )
    parser.add_argument(
        "--out", default=None, help=f"where to write the .npz (default {default_weights_path()})"
    )
    parser.add_argument(
        "--no_hash_check",
        action="store_true",
        help=f"accept a source whose sha256 does not start with {WEIGHTS_SHA256_PREFIX}",
    )
    args = parser.parse_args(argv)
    out = fetch_inception(args.src, args.out, check_hash=not args.no_hash_check)
    print(f"Wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# Feature extraction


@functools.partial(jax.jit, static_argnums=0)
def _apply(module: FIDInceptionV3, variables, images):
    # One jitted function for all extractors: equal modules share compiled programs.
    return module.apply(variables, images)


def make_inception_fn(
    module: FIDInceptionV3, variables: Mapping, *, devices=None
) -> Callable[[Any], tuple[jax.Array, jax.Array]]:
    """A jitted images [B, H, W, 3] (uint8, or float in [0, 255]) -> (pool [B, 2048],
    logits [B, 1008]) float32, the batch split over a 1-D mesh of `devices` (default: this
    process's devices; each host extracts features of its own images).

    A batch that does not split evenly is padded to a multiple of the device count and the pad
    dropped from the outputs. Each new (B, H, W, dtype) compiles once."""
    devices = jax.local_devices() if devices is None else list(devices)
    mesh = parallel.data_mesh(devices)
    variables = jax.device_put(variables, parallel.replicated(mesh))
    batch_sharding = parallel.batch_sharding(mesh)

    def inception_fn(images):
        images = np.asarray(images)
        if images.ndim == 4 and images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)  # grayscale, as FID tools treat MNIST
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Expected images [B, H, W, 3] (or 1 channel), got {images.shape}.")
        num = images.shape[0]
        pad = -num % len(devices)
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        pool, logits = _apply(module, variables, jax.device_put(images, batch_sharding))
        return (pool[:num], logits[:num]) if pad else (pool, logits)

    return inception_fn


def inception_extractor(
    path: str | os.PathLike | None = None,
    batch_size: int = 200,
    *,
    progress: bool = False,
    devices=None,
) -> BatchedExtractor:
    """The FID feature extractor: loads the converted weights (`load_inception(path)`) and
    splits each batch over `devices` (default: this process's devices). `batch_size` is rounded
    up to a multiple of the device count."""
    module, variables = load_inception(path)
    devices = jax.local_devices() if devices is None else list(devices)
    num_devices = len(devices)
    fn = make_inception_fn(module, variables, devices=devices)
    return BatchedExtractor(
        "inception-fid",
        FEATURE_DIM,
        NUM_LOGITS,
        fn,
        round_up(batch_size, num_devices),
        num_devices,
        progress,
    )
