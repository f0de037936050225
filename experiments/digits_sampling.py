"""Guidance and sampler study on the bundled digits: how often samples show the requested class,
and what fewer DDIM steps cost in quality and save in time.

    diffusion-jax train --config digits_cond --workdir runs/digits_cond
    diffusion-jax train --config digits --workdir runs/digits
    diffusion-jax train-classifier --config digits_classifier \\
        --workdir runs/digits_classifier
    python experiments/digits_sampling.py --num 500

The *evaluation* classifier is scikit-learn's RBF support vector machine trained on the digits
training split (pixels on sklearn's 0..16 scale); it never sees noisy images and is independent of
the noise-aware classifier used for guidance. For each setting we report the share of samples it
assigns to the requested class, and a distribution distance to the 185 held-out digits: the
unbiased MMD^2 with a Gaussian kernel on pixels (`evaluation.two_sample`; lower is closer, ~0 for
the held-out set against the training set). Results go to experiments/results/digits_sampling.json
and grids to experiments/results/digits_sampling_*.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np
from sklearn.svm import SVC

from diffusion_jax.configs import base_config
from diffusion_jax.data import images
from diffusion_jax.data import pipeline as data
from diffusion_jax.evaluation import two_sample
from diffusion_jax.models.classifier import make_classifier_apply_fn, make_classifier_cond_fn
from diffusion_jax.sampling import generate, runs

RESULTS = Path(__file__).resolve().parent / "results"


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 8, 8, 1], labels) of the digits split, through the project's pipeline."""
    config = base_config().data
    config.update(dataset="digits", use_labels=True)
    xs, ys = [], []
    for batch in data.make_eval_iterator(config, batch_size=256, split=split):
        xs.append(images.to_uint8(batch["image"]))
        ys.append(batch["label"])
    return np.concatenate(xs), np.concatenate(ys)


def to_sklearn(x_uint8: np.ndarray) -> np.ndarray:
    """uint8 images -> sklearn's digits features (64 pixels on a 0..16 scale)."""
    return x_uint8.reshape(len(x_uint8), -1).astype(np.float64) * (16.0 / 255.0)


def new_report(num: int, svm: SVC, train_x, test_x, test_y) -> dict:
    """The report's header: the machine, and the baselines of the two measures (the evaluation
    classifier's held-out accuracy, the MMD^2 of held-out against training digits)."""
    return {
        "machine": f"{platform.machine()} CPU x{jax.device_count()}, jax {jax.__version__}",
        "num_samples": num,
        "evaluation_classifier": "sklearn SVC(gamma=0.001) on the 1,612 training digits",
        "evaluation_classifier_test_accuracy": float(
            np.mean(svm.predict(to_sklearn(test_x)) == test_y)
        ),
        "mmd2_test_vs_train": two_sample.mmd_permutation_test(
            to_sklearn(test_x), to_sklearn(train_x[:500]), num_permutations=1
        )[0],
        "rows": [],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--cond_workdir", default="runs/digits_cond")
    parser.add_argument("--uncond_workdir", default="runs/digits")
    parser.add_argument("--classifier_workdir", default="runs/digits_classifier")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)

    train_x, train_y = digits_split("train")
    test_x, test_y = digits_split("test")
    svm = SVC(gamma=0.001).fit(to_sklearn(train_x), train_y)
    report = new_report(args.num, svm, train_x, test_x, test_y)

    def measure(name, run, **kw):
        start = time.perf_counter()
        samples, labels = generate.generate(run, num=args.num, progress=False, **kw)
        seconds = time.perf_counter() - start
        row = {"setting": name, "seconds": round(seconds, 1)}
        if labels is not None:
            row["requested_class_share"] = float(
                np.mean(svm.predict(to_sklearn(samples)) == labels)
            )
        row["mmd2_vs_test"] = two_sample.mmd_permutation_test(
            to_sklearn(samples), to_sklearn(test_x), num_permutations=1
        )[0]
        images.save_grid(samples[:100], RESULTS / f"digits_sampling_{name}.png", ncol=10)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)

    cond = runs.load_run(args.cond_workdir)
    ddim50 = dict(sampler="ddim", steps=50, eta=0.0)
    for w in (0.0, 1.0, 3.0):
        measure(f"cfg_w{w:g}_ddim50", cond, cfg_scale=w, **ddim50)

    uncond = runs.load_run(args.uncond_workdir)
    module, params = runs.load_classifier(
        args.classifier_workdir, diffusion_config=uncond.config.diffusion
    )
    cond_fn = make_classifier_cond_fn(make_classifier_apply_fn(module), params)
    classes = list(range(10))
    for s in (1.0, 3.0, 10.0):
        measure(
            f"classifier_s{s:g}_uncond_ddim50",
            uncond,
            cond_fn=cond_fn,
            classifier_scale=s,
            classes=classes,
            **ddim50,
        )

    for steps in (10, 25, 50):
        measure(f"ddim{steps}_cond", cond, sampler="ddim", steps=steps)
    measure("ancestral1000_cond", cond, sampler="ancestral")

    (RESULTS / "digits_sampling.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
