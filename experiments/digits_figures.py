"""The DDPM paper's sampling figures, on the class-conditional digits model.

    python experiments/digits_figures.py     # after training runs/digits_cond (see README)

- progressive generation: for one sample of each class, the x_0 predictions along a single
  ancestral chain at 10 evenly spaced points (rows: classes, columns: steps T-100, ..., 0);
- interpolation: two held-out digits inverted to x_T with DDIM (eta 0, 100 steps), slerped in
  x_T at 8 points and decoded (rows: 5 pairs).
Both go to experiments/results/digits_progressive.png and digits_interpolation.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.configs import base_config
from diffusion_jax.data import images
from diffusion_jax.data import pipeline as data
from diffusion_jax.sampling import generate, runs
from diffusion_jax.sampling import samplers as sampling

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/digits_cond", help="the class-conditional run")
    args = parser.parse_args()
    run = runs.load_run(args.workdir)
    d = run.config.diffusion
    kw = dict(denoiser=sampling.Denoiser(mean_type=d.mean_type, var_type=d.var_type))
    y = jnp.arange(10, dtype=jnp.int32)
    full = generate.sampling_schedule(run.config)
    _, snaps = sampling.progressive_x0(
        run.apply_fn,
        run.params,
        full,
        (10, *run.shape),
        jax.random.key(0),
        y=y,
        num_snapshots=10,
        **kw,
    )  # [K, 10, H, W, C]
    grid = np.asarray(jnp.swapaxes(snaps, 0, 1)).reshape(-1, *run.shape)  # row = class
    images.save_grid(grid, RESULTS / "digits_progressive.png", ncol=10)

    config = base_config().data
    config.update(dataset="digits", use_labels=True)
    batch = next(iter(data.make_eval_iterator(config, batch_size=10, split="test")))
    x_a, x_b = jnp.asarray(batch["image"][:5]), jnp.asarray(batch["image"][5:10])
    # A conditional network needs a label for inversion and decoding: use the null label.
    null = jnp.full((5,), run.num_classes, jnp.int32)
    sched = generate.sampling_schedule(run.config, steps=100)
    frames = sampling.interpolate(
        run.apply_fn, run.params, sched, x_a, x_b, jnp.linspace(0.0, 1.0, 8), y=null, **kw
    )  # [L, B, H, W, C]
    grid = np.asarray(jnp.swapaxes(frames, 0, 1)).reshape(-1, *run.shape)
    images.save_grid(grid, RESULTS / "digits_interpolation.png", ncol=8)
    print("wrote", RESULTS / "digits_progressive.png", RESULTS / "digits_interpolation.png")


if __name__ == "__main__":
    main()
