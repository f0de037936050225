"""Sample quality and likelihood of the digits model, measured as the papers measure CIFAR-10.

    diffusion-jax train --config digits --workdir runs/digits
    diffusion-jax train-classifier --config digits_features \\
        --workdir runs/digits_features
    python experiments/digits_evaluation.py          # -> experiments/results/digits_evaluation.json

FID, KID, precision/recall (k=3) and the Inception-Score analogue use the digits feature
network's 128-d pooled features and 10 logits (Inception knows nothing of 8x8 digits), against
the 185 held-out digits. Rows: the 1,612 training digits themselves (the floor: what a perfect
model's samples would score), the model's samples by DDIM (50 steps) and by the full 1000-step
ancestral sampler, and Gaussian noise (the ceiling). Then the bound in bits/dim over the held-out
split (`bpd.dataset_bpd`, all 1000 steps). Each sample set has 1,000 images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from diffusion_jax.evaluation import bpd, evaluate, features
from diffusion_jax.sampling import generate, runs

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "digits"))
    parser.add_argument("--feature_workdir", default=str(ROOT / "runs" / "digits_features"))
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "experiments/results/digits_evaluation.json"))
    args = parser.parse_args()

    extractor = features.get_extractor("classifier", workdir=args.feature_workdir)
    run = runs.load_run(args.workdir)
    ref = evaluate.reference_statistics(extractor, data_config=run.config.data, split="test")
    # 185 reference images: KID subsets use all of them.
    kw = dict(kid_subset_size=ref.num_images)
    results: dict = {"reference": ref.source, "features": extractor.name, "rows": {}}

    def score(name: str, images: np.ndarray, seconds: float = 0.0) -> None:
        row = evaluate.sample_metrics(images, extractor, ref, **kw)
        row["sampling_seconds"] = round(seconds, 1)
        results["rows"][name] = row
        print(name, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)

    train_images = np.concatenate(
        [x for x, _ in features.dataset_images(run.config.data, split="train")]
    )
    score("training digits (floor)", train_images)
    for name, sampler, steps in (
        ("DDIM, 50 steps", "ddim", 50),
        ("ancestral, 1000 steps", "ancestral", 0),
    ):
        start = time.perf_counter()
        images, _ = generate.generate(run, num=args.num, sampler=sampler, steps=steps, seed=1)
        score(name, images, time.perf_counter() - start)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (args.num, *train_images.shape[1:])).astype(np.uint8)
    score("uniform noise (ceiling)", noise)

    start = time.perf_counter()
    results["bpd_test"] = bpd.dataset_bpd(run, split="test", batch_size=64)
    results["bpd_test"]["seconds"] = round(time.perf_counter() - start, 1)
    print("bpd", json.dumps(results["bpd_test"]))
    results["model_step"] = run.step
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
