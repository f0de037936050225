"""pytorch-fid's FID Inception weights: fetch, check, convert to Flax and load.

    diffusion-jax fetch-inception                              # once: download + convert (torch)
    inception_weights.fetch_inception(src="pt_inception-2015-12-05-6726825d.pth")   # or offline
    module, variables = inception_weights.load_inception()     # no torch needed

`fetch_inception` downloads or copies that .pth, checks its sha256, reads it with torch, converts it
(`convert_state_dict`, numpy) and writes an .npz that `load_inception` reads without torch.
"""

from __future__ import annotations

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

import numpy as np
from flax import traverse_util

from diffusion_jax.errors import UserError
from diffusion_jax.evaluation.inception import FIDInceptionV3, variable_shapes

WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# torch-hub convention: the hex digits in the file name are a prefix of the file's sha256.
WEIGHTS_SHA256_PREFIX = "6726825d"
_META = "__meta__/"  # .npz entries under this prefix are metadata, not variables
_FORMAT_VERSION = 1


class InceptionWeightsNotFoundError(UserError, FileNotFoundError):
    """The converted Inception weights are not where they were looked for."""


class InceptionWeightsError(UserError, RuntimeError):
    """Getting or converting the weights failed (network, hash, torch missing, bad file)."""


def _flatten(tree: Mapping) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(tree), sep="/")


def _unflatten(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _flax_key(torch_key: str) -> tuple[str | None, Callable[[np.ndarray], np.ndarray] | None]:
    """torch key -> (Flax leaf key, transform); (None, None) if ignored, KeyError if no rule."""
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
    """pytorch-fid's FIDInceptionV3 state dict (numpy) -> {"params", "batch_stats"}: every tensor
    must fill exactly one Flax leaf and every leaf be filled (BatchNorm's `num_batches_tracked`,
    absent from older files, is dropped), else a ValueError names every bad key."""
    expected = variable_shapes()
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
    torch_leaf = dict(kernel="weight", scale="weight", mean="running_mean", var="running_var")
    names = []
    for key in flax_keys:
        _, *path, leaf = key.split("/")
        names.append(".".join([*path, torch_leaf.get(leaf, leaf)]))
    return names


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
    """Converts pytorch-fid's .pth (downloaded if `src` is None; its sha256 must start with 6726825d
    unless check_hash=False) into an .npz at `out` (default `default_weights_path()`), returned:
    variables under "/"-joined keys ("params/Mixed_5b/..."), metadata under "__meta__/"."""
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
    """(module, variables) of the .npz `fetch_inception` wrote (default `default_weights_path()`);
    if absent, InceptionWeightsNotFoundError says how to get it."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise InceptionWeightsNotFoundError(
            f"No Inception weights at {path}. {_how_to_fetch(path)}"
        )
    with np.load(path, allow_pickle=False) as data:
        flat = {k: data[k] for k in data.files if not k.startswith(_META)}
    expected = variable_shapes()
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
