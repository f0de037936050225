"""The FID Inception network (`inception`), its weights (`inception_weights`), its extractor.

The published weights are not needed: tests/data/pt_inception_layout.json holds the name and
shape of every tensor of pytorch-fid's FIDInceptionV3 state dict (dumped from the real package)
and pytorch-fid's outputs for seeded random weights, which `random_state_dict` rebuilds here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
import urllib.error
from pathlib import Path

import jax
import numpy as np
import pytest

from diffusion_jax import cli
from diffusion_jax.evaluation import inception, inception_weights
from diffusion_jax.evaluation.extractor import BatchedExtractor
from diffusion_jax.evaluation.features import inception_extractor

FIXTURE = json.loads((Path(__file__).parent / "data" / "pt_inception_layout.json").read_text())
LAYOUT = FIXTURE["tensors"]
REFERENCE = FIXTURE["reference"]
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def random_state_dict(layout, seed):
    """Seeded weights in pytorch-fid's layout, He-scaled, with non-trivial BatchNorm statistics.
    Identical to experiments/checks/inception_vs_pytorch_fid.py's, which made the reference."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in layout.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[name] = np.zeros(shape, np.int64)
            continue
        if len(shape) == 4:
            a = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif name == "fc.weight":
            a = rng.standard_normal(shape) / math.sqrt(shape[1])
        elif leaf == "weight":
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf == "running_var":
            a = rng.uniform(0.5, 1.5, shape)
        else:  # bias, running_mean
            a = 0.1 * rng.standard_normal(shape)
        out[name] = a.astype(np.float32)
    return out


def random_images(seed, num, size):
    return np.random.default_rng(seed).integers(0, 256, (num, size, size, 3), dtype=np.uint8)


def torch_bilinear(x, out_h, out_w):
    """torch's F.interpolate(mode="bilinear", align_corners=False) on [B, H, W, C], in float64:
    source coordinate (i + 0.5) * in / out - 0.5, clamped at 0 and at the last pixel."""

    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    x = np.asarray(x, np.float64)
    lo, hi, t = taps(x.shape[1], out_h)
    x = x[:, lo] * (1 - t)[None, :, None, None] + x[:, hi] * t[None, :, None, None]
    lo, hi, t = taps(x.shape[2], out_w)
    return x[:, :, lo] * (1 - t)[None, None, :, None] + x[:, :, hi] * t[None, None, :, None]


@pytest.fixture(scope="module")
def state_dict():
    return random_state_dict(LAYOUT, REFERENCE["weight_seed"])


@pytest.fixture(scope="module")
def variables(state_dict):
    return inception_weights.convert_state_dict(state_dict)


@pytest.fixture(scope="module")
def inception_fn(variables):
    # Two devices and batches of 2 images: the sharded path, at the cost of two images.
    return inception.make_inception_fn(
        inception.FIDInceptionV3(), variables, devices=jax.local_devices()[:2]
    )


@pytest.fixture(scope="module")
def reference_outputs(inception_fn):
    images = random_images(REFERENCE["image_seed"], 2, REFERENCE["image_size"])
    pool, logits = inception_fn(images)
    return images, pool, logits


# ---------------------------------------------------------------------------------------------
# Conversion


def test_layout_fixture_is_pytorch_fids_fid_inception():
    assert len(LAYOUT) == 566  # 94 BasicConv2d x 6 tensors + fc weight and bias
    assert LAYOUT["fc.weight"] == [1008, 2048]
    assert LAYOUT["Mixed_7c.branch_pool.conv.weight"] == [192, 2048, 1, 1]
    assert not any(k.startswith("AuxLogits") for k in LAYOUT)


def test_convert_uses_every_tensor_exactly_once(state_dict, variables):
    flat = {
        "/".join(str(getattr(p, "key", p)) for p in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]
    }
    assert set(flat) == set(inception.variable_shapes())
    floats = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert (
        len(flat) == len(floats) == 94 * 5 + 2
    )  # conv weight + 4 BatchNorm tensors per BasicConv2d
    # The random values are all distinct: equal multisets mean each tensor landed exactly once.
    ours = np.sort(np.concatenate([v.ravel() for v in flat.values()]))
    theirs = np.sort(np.concatenate([v.ravel() for v in floats.values()]))
    np.testing.assert_array_equal(ours, theirs)
    # ... and in the right place, in the right layout.
    p, stats = variables["params"], variables["batch_stats"]
    w = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # [O, I, 1, 7]
    np.testing.assert_array_equal(
        p["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"][0, 3], w[:, :, 0, 3].T
    )
    np.testing.assert_array_equal(p["fc"]["kernel"], state_dict["fc.weight"].T)
    np.testing.assert_array_equal(p["fc"]["bias"], state_dict["fc.bias"])
    bn = "Mixed_7c.branch3x3dbl_3b.bn."
    np.testing.assert_array_equal(
        p["Mixed_7c"]["branch3x3dbl_3b"]["bn"]["scale"], state_dict[bn + "weight"]
    )
    np.testing.assert_array_equal(
        stats["Mixed_7c"]["branch3x3dbl_3b"]["bn"]["var"], state_dict[bn + "running_var"]
    )


def test_convert_accepts_files_without_batch_counters(state_dict, variables):
    old_style = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    converted = inception_weights.convert_state_dict(old_style)
    jax.tree.map(np.testing.assert_array_equal, converted, variables)


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda sd: sd.pop("Mixed_6c.branch7x7_2.conv.weight"), "Mixed_6c.branch7x7_2.conv.weight"),
        (lambda sd: sd.pop("Mixed_5b.branch_pool.bn.running_var"), "running_var"),
        (lambda sd: sd.update({"AuxLogits.fc.weight": np.zeros((1008, 768))}), "AuxLogits.fc"),
        (lambda sd: sd.update({"Mixed_8a.bn.num_batches_tracked": np.zeros(())}), "Mixed_8a"),
        (
            lambda sd: sd.update({"fc.weight": np.zeros((1000, 2048), np.float32)}),
            "fc.weight (1000, 2048)",
        ),
        (
            lambda sd: sd.update({"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 5, 5))}),
            "Conv2d_1a_3x3.conv.weight",
        ),
    ],
    ids=["missing-conv", "missing-bn-stat", "extra", "extra-counter", "fc-shape", "conv-shape"],
)
def test_convert_names_the_offending_key(state_dict, edit, named):
    broken = dict(state_dict)
    edit(broken)
    with pytest.raises(ValueError, match="not pytorch-fid's FIDInceptionV3") as info:
        inception_weights.convert_state_dict(broken)
    assert named in str(info.value)


# ---------------------------------------------------------------------------------------------
# Resizing and the network


@pytest.mark.parametrize("shape", [(32, 32), (500, 333), (7, 400), (299, 299)])
def test_resize_matches_torch_bilinear(shape):
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape, 3)).astype(np.float32)
    ours = np.asarray(inception.resize_bilinear(x, 299))
    assert ours.shape == (2, 299, 299, 3)
    # Source coordinates in float32 (as torch computes them too) err by up to ~1e-5 of a pixel
    # at 500 pixels; another convention (align_corners, no half-pixel shift, antialiasing when
    # shrinking) errs by a sizeable fraction of the pixel values.
    np.testing.assert_allclose(ours, torch_bilinear(x, 299, 299), atol=1e-4)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed: compared with numpy only")
def test_resize_matches_torch_itself():
    import torch

    x = np.random.default_rng(1).uniform(0, 1, (1, 500, 37, 3)).astype(np.float32)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear"
    )
    ours = np.asarray(inception.resize_bilinear(x, 299))
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=2e-6)


def test_network_matches_pytorch_fid(reference_outputs):
    # pytorch-fid's outputs for the same weights and images (tests/data, made by the check script).
    _, pool, logits = reference_outputs
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert pool.dtype == logits.dtype == np.float32
    assert np.all(np.isfinite(pool)) and np.all(np.isfinite(logits))
    for ours, stride, ref in [
        (pool, REFERENCE["pool_stride"], REFERENCE["pool"]),
        (logits, REFERENCE["logit_stride"], REFERENCE["logits"]),
    ]:
        ref = np.asarray(ref)
        np.testing.assert_allclose(
            np.asarray(ours)[:, ::stride], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()
        )


def test_small_images_are_resized_like_pytorch_fid(reference_outputs, inception_fn, variables):
    images, pool, logits = reference_outputs
    resized = (torch_bilinear(images / 255.0, 299, 299) * 255.0).astype(np.float32)
    pool_299, logits_299 = inception_fn(resized)
    np.testing.assert_allclose(pool_299, pool, rtol=1e-4, atol=1e-4 * np.abs(pool).max())
    np.testing.assert_allclose(logits_299, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    # The logits are the classifier applied to the pool features.
    fc = variables["params"]["fc"]
    np.testing.assert_allclose(logits, pool @ fc["kernel"] + fc["bias"], rtol=1e-4, atol=1e-3)
    # The tolerances above are far below the difference between two images.
    assert np.abs(pool[0] - pool[1]).max() > 100 * 1e-4 * np.abs(pool).max()


def test_batches_are_sharded_and_padded(reference_outputs, inception_fn):
    images, pool, _ = reference_outputs
    assert len(pool.sharding.device_set) == 2
    one_pool, one_logits = inception_fn(images[1:])  # padded to two, the pad dropped
    assert one_pool.shape == (1, 2048) and one_logits.shape == (1, 1008)
    np.testing.assert_allclose(one_pool[0], pool[1], rtol=1e-5, atol=1e-5)


def test_extractor_batches_pads_and_returns_float64(reference_outputs, inception_fn):
    images, pool, logits = reference_outputs
    extract = BatchedExtractor("inception-fid", 2048, 1008, inception_fn, 2, 2, progress=True)
    assert (extract.name, extract.feature_dim, extract.num_logits) == ("inception-fid", 2048, 1008)
    three = np.concatenate([images, images[:1]])  # batches [0, 1] and [2 + pad]
    features, out = extract(three)
    assert features.shape == (3, 2048) and out.shape == (3, 1008)
    assert features.dtype == out.dtype == np.float64
    np.testing.assert_allclose(features, np.concatenate([pool, pool[:1]]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, np.concatenate([logits, logits[:1]]), rtol=1e-5, atol=1e-5)
    empty_features, empty_logits = extract(images[:0])
    assert empty_features.shape == (0, 2048) and empty_logits.shape == (0, 1008)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        extract(images[..., 0])
    # Grayscale images are seen as three equal channels.
    gray = images[..., :1]
    np.testing.assert_allclose(extract(gray)[0], extract(np.repeat(gray, 3, -1))[0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Fetching, saving and loading


def test_load_missing_weights_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_JAX_CACHE", str(tmp_path / "cache"))
    assert inception_weights.default_weights_path() == tmp_path / "cache" / "inception_fid.npz"
    with pytest.raises(inception_weights.InceptionWeightsNotFoundError) as info:
        inception_weights.load_inception()
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "diffusion-jax fetch-inception" in message
    assert "--from pt_inception-2015-12-05-6726825d.pth" in message
    assert str(inception_weights.default_weights_path()) in message


def _fake_pth(tmp_path, content=b"not really torch"):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    return path


def test_fetch_rejects_a_file_with_the_wrong_hash(tmp_path, monkeypatch):
    src = _fake_pth(tmp_path)
    read = []
    monkeypatch.setattr(inception_weights, "_read_torch_state_dict", lambda p: read.append(p))
    with pytest.raises(inception_weights.InceptionWeightsError, match="6726825d") as info:
        inception_weights.fetch_inception(src, tmp_path / "out.npz")
    assert hashlib.sha256(src.read_bytes()).hexdigest() in str(info.value)
    assert not read and not (tmp_path / "out.npz").exists()


def test_fetch_without_torch_says_pip_install_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(inception_weights.InceptionWeightsError, match="pip install torch"):
        inception_weights.fetch_inception(
            _fake_pth(tmp_path), tmp_path / "out.npz", check_hash=False
        )


def test_fetch_offline_says_to_download_elsewhere(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(inception_weights.urllib.request, "urlopen", offline)
    with pytest.raises(inception_weights.InceptionWeightsError, match="--from") as info:
        inception_weights.fetch_inception(None, tmp_path / "out.npz")
    assert inception_weights.WEIGHTS_URL in str(info.value)


def test_fetch_failures_leave_no_broken_file(tmp_path, monkeypatch, state_dict):
    out = tmp_path / "cache" / "inception_fid.npz"
    broken = {k: v for k, v in state_dict.items() if not k.startswith("Mixed_7c")}
    monkeypatch.setattr(inception_weights, "_read_torch_state_dict", lambda p: broken)
    with pytest.raises(inception_weights.InceptionWeightsError, match="Mixed_7c"):
        inception_weights.fetch_inception(_fake_pth(tmp_path), out, check_hash=False)
    assert not out.exists()
    # A write that dies half-way leaves the previous file as it was, and no temporary file.
    out.parent.mkdir()
    out.write_bytes(b"previous")
    monkeypatch.setattr(inception_weights, "_read_torch_state_dict", lambda p: state_dict)

    def savez_then_die(file, **arrays):
        file.write(b"PK half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(inception_weights.np, "savez", savez_then_die)
    with pytest.raises(OSError, match="disk full"):
        inception_weights.fetch_inception(_fake_pth(tmp_path), out, check_hash=False)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_fetch_and_load_round_trip(tmp_path, monkeypatch, state_dict, variables):
    # Without torch, stand in for torch.load; with it, the real file format is used below.
    monkeypatch.setattr(inception_weights, "_read_torch_state_dict", lambda p: state_dict)
    monkeypatch.setenv("DIFFUSION_JAX_CACHE", str(tmp_path / "cache"))
    src = _fake_pth(tmp_path)
    assert cli.main(["fetch-inception", "--from", str(src), "--no_hash_check"]) == 0
    module, loaded = inception_weights.load_inception()
    assert isinstance(module, inception.FIDInceptionV3)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    with np.load(inception_weights.default_weights_path()) as data:
        sha = str(data["__meta__/source_sha256"])
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed: the .pth reader is untested")
def test_fetch_reads_a_torch_file(tmp_path, state_dict, variables):
    import torch

    src = tmp_path / "random.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, src)
    out = inception_weights.fetch_inception(src, tmp_path / "converted.npz", check_hash=False)
    assert out == tmp_path / "converted.npz"
    _, loaded = inception_weights.load_inception(out)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_inception_extractor_from_file(tmp_path, monkeypatch, state_dict, reference_outputs):
    monkeypatch.setattr(inception_weights, "_read_torch_state_dict", lambda p: state_dict)
    path = inception_weights.fetch_inception(
        _fake_pth(tmp_path), tmp_path / "w.npz", check_hash=False
    )
    devices = jax.local_devices()[:2]  # as `inception_fn`: the compiled program is reused
    extract = inception_extractor(path, batch_size=3, devices=devices)
    assert extract.batch_size == 4  # rounded up to a multiple of the device count
    assert extract.name == "inception-fid"
    images, pool, logits = reference_outputs
    features, out = extract(images)  # one batch of two over the two devices
    np.testing.assert_allclose(features, pool, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-4)
