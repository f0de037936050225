"""One-off check: diffusion_jax's Flax FID Inception against pytorch-fid, with random weights.

Not run in CI. From the repository root, in two interpreters (the first with torch, torchvision
and pytorch-fid; the second with diffusion_jax's dependencies and torch):

    /work/fidvenv/bin/python experiments/checks/inception_vs_pytorch_fid.py torch \\
        --workdir /tmp/inception_check
    PYTHONPATH=. /work/venv311/bin/python experiments/checks/inception_vs_pytorch_fid.py jax \\
        --workdir /tmp/inception_check

`torch` builds pytorch-fid's InceptionV3 wrapper (2048-d pool block, resize_input=True,
normalize_input=True) around `fid_inception_v3()`, fills it with seeded random weights (BatchNorm
running statistics included, so eval-mode BN is not the identity), saves the FIDInceptionV3 state
dict to WORKDIR/weights.pth and the pool features and fc logits of random uint8 images at 32x32
and 299x299 to WORKDIR/reference.npz. `jax` converts weights.pth with `fetch_inception` and
prints the largest absolute and relative differences.

    /work/fidvenv/bin/python experiments/checks/inception_vs_pytorch_fid.py layout

regenerates tests/data/pt_inception_layout.json: the name and shape of every tensor in the real
FIDInceptionV3 state dict, plus pytorch-fid's outputs (a strided subset) for the seeded weights
and images that tests/test_inception.py rebuilds with the same generator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = ROOT / "tests" / "data" / "pt_inception_layout.json"
WEIGHT_SEED, IMAGE_SEED = 0, 1
POOL_STRIDE, LOGIT_STRIDE = 64, 63  # which outputs the fixture keeps


def random_state_dict(layout: dict[str, list[int]], seed: int) -> dict[str, np.ndarray]:
    """Seeded weights for a FIDInceptionV3 state-dict layout: He-scaled convolutions and
    non-trivial BatchNorm statistics, so activations stay O(1) through the 94 conv layers.
    (tests/test_inception.py has the same function: keep the two identical.)"""
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


def random_images(seed: int, num: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# torch side (torch, torchvision, pytorch-fid)


@contextlib.contextmanager
def _no_weight_download():
    """fid_inception_v3() downloads and loads the published weights; skip both (the weights
    stay uninitialised until we load ours)."""
    import torchvision
    from pytorch_fid import inception as pfi

    skip = object()
    original_url = pfi.load_state_dict_from_url
    original_load = torchvision.models.inception.Inception3.load_state_dict

    def load_state_dict(self, state_dict, *args, **kwargs):
        if state_dict is skip:
            return None
        return original_load(self, state_dict, *args, **kwargs)

    pfi.load_state_dict_from_url = lambda *a, **k: skip
    torchvision.models.inception.Inception3.load_state_dict = load_state_dict
    try:
        yield
    finally:
        pfi.load_state_dict_from_url = original_url
        torchvision.models.inception.Inception3.load_state_dict = original_load


def _build_pytorch_fid():
    """(pytorch-fid's InceptionV3 wrapper, the FIDInceptionV3 inside it), weights uninitialised."""
    from pytorch_fid import inception as pfi

    inner = []
    original = pfi.fid_inception_v3
    pfi.fid_inception_v3 = lambda: inner.append(original()) or inner[-1]
    try:
        with _no_weight_download():
            wrapper = pfi.InceptionV3([3], resize_input=True, normalize_input=True)
    finally:
        pfi.fid_inception_v3 = original
    return wrapper.eval(), inner[0].eval()


def _torch_outputs(wrapper, inner, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # pytorch-fid's ToTensor
    with torch.no_grad():
        pool = wrapper(x)[0].flatten(1)  # [B, 2048]
        logits = inner.fc(pool)  # [B, 1008]
    return pool.numpy(), logits.numpy()


def _load_random_weights(inner, layout) -> dict[str, np.ndarray]:
    import torch

    state = random_state_dict(layout, WEIGHT_SEED)
    inner.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return state


def write_layout() -> None:
    import pytorch_fid
    import torch
    import torchvision

    wrapper, inner = _build_pytorch_fid()
    layout = {k: list(v.shape) for k, v in inner.state_dict().items()}
    _load_random_weights(inner, layout)
    images = random_images(IMAGE_SEED, 2, 32)
    pool, logits = _torch_outputs(wrapper, inner, images)
    fixture = {
        "source": (
            f"pytorch_fid.inception.fid_inception_v3().state_dict(): pytorch-fid "
            f"{pytorch_fid.__version__}, torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}; written by experiments/checks/inception_vs_pytorch_fid.py"
        ),
        "tensors": layout,
        "reference": {
            "about": (
                f"pytorch-fid InceptionV3 outputs for random_state_dict(tensors, seed="
                f"{WEIGHT_SEED}) on random_images(seed={IMAGE_SEED}, num=2, size=32): "
                f"pool[:, ::{POOL_STRIDE}], logits[:, ::{LOGIT_STRIDE}]"
            ),
            "weight_seed": WEIGHT_SEED,
            "image_seed": IMAGE_SEED,
            "image_size": 32,
            "pool_stride": POOL_STRIDE,
            "logit_stride": LOGIT_STRIDE,
            "pool": [[float(f"{v:.7g}") for v in row[::POOL_STRIDE]] for row in pool],
            "logits": [[float(f"{v:.7g}") for v in row[::LOGIT_STRIDE]] for row in logits],
        },
    }
    LAYOUT.parent.mkdir(parents=True, exist_ok=True)
    LAYOUT.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"Wrote {LAYOUT}: {len(layout)} tensors")


def run_torch(workdir: Path) -> None:
    import torch

    wrapper, inner = _build_pytorch_fid()
    layout = {k: list(v.shape) for k, v in inner.state_dict().items()}
    _load_random_weights(inner, layout)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.save(inner.state_dict(), workdir / "weights.pth")
    arrays = {}
    for size in (32, 299):
        images = random_images(100 + size, 4, size)
        pool, logits = _torch_outputs(wrapper, inner, images)
        arrays |= {f"images{size}": images, f"pool{size}": pool, f"logits{size}": logits}
        # Cross-check: the inner model's own forward on the preprocessed input gives the logits.
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear")
        with torch.no_grad():
            direct = inner(2 * x - 1).numpy()
        print(f"{size}x{size}: inner(x) vs fc(pool) max abs {np.abs(direct - logits).max():.2e}")
    np.savez(workdir / "reference.npz", **arrays)
    print(f"Wrote {workdir / 'weights.pth'} and {workdir / 'reference.npz'}")


# ---------------------------------------------------------------------------------------------
# JAX side (diffusion_jax)


def run_jax(workdir: Path) -> None:
    from diffusion_jax.evaluation import inception, inception_weights

    npz = inception_weights.fetch_inception(
        workdir / "weights.pth", workdir / "inception.npz", check_hash=False
    )
    fn = inception.make_inception_fn(*inception_weights.load_inception(npz))
    reference = np.load(workdir / "reference.npz")
    for size in (32, 299):
        pool, logits = (np.asarray(a) for a in fn(reference[f"images{size}"]))
        for name, ours in (("pool", pool), ("logits", logits)):
            ref = reference[f"{name}{size}"]
            diff, scale = np.abs(ours - ref), np.abs(ref).max()
            big = np.abs(ref) > 1e-2 * scale  # elementwise relative error where it means something
            print(
                f"{size}x{size} {name}: max |ref| {scale:.3g}, max abs diff {diff.max():.3g} "
                f"({diff.max() / scale:.3g} of max |ref|), max rel diff where |ref| > 1% of max "
                f"{np.max(diff[big] / np.abs(ref[big])):.3g}"
            )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["torch", "jax", "layout"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/inception_check"))
    args = parser.parse_args(argv)
    if args.part == "layout":
        write_layout()
    elif args.part == "torch":
        run_torch(args.workdir)
    else:
        run_jax(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
