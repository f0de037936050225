"""Steps per second of the compiled train step of a config, on synthetic data.

    python experiments/benchmarks/train_speed.py --config experiments/configs/cifar10.py \
        --steps 5 [--batch_size 128]

Builds the config's model, optimizer and data-parallel step exactly as `train` does, feeds
random images of the dataset's shape (so no dataset is needed), and times `--steps` steps after
one warm-up (compilation) step, blocking on the result of each. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time

import jax
import numpy as np

from diffusion_jax import data, parallel, schedules, train
from diffusion_jax.models import count_params, make_apply_fn
from diffusion_jax.models.factory import create_model
from diffusion_jax.train_state import make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("cfg", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if args.batch_size:
        config.training.batch_size = args.batch_size
    # The shape alone: digits/toy2d know theirs; TFDS datasets need not be prepared.
    shapes = {"cifar10": (32, 32, 3), "celeb_a_hq": (256, 256, 3)}
    shape = shapes.get(config.data.dataset) or data.dataset_info(config.data).shape
    if config.data.image_size and len(shape) == 3:
        shape = (config.data.image_size, config.data.image_size, shape[-1])

    mesh = parallel.data_mesh()
    model = create_model(config, shape)
    tx, lr_fn = make_optimizer(config.optim)
    d = config.diffusion
    sched = schedules.make_schedule(d.beta_schedule, d.num_timesteps)
    _, init = train.init_train_state(config, model, tx, shape, mesh)
    step_fn = train.compile_train_step(
        train.make_train_step(make_apply_fn(model), tx, lr_fn, sched, config), mesh
    )
    state = init()
    rng = np.random.default_rng(0)
    batch_size = config.training.batch_size

    def batch():
        x = rng.uniform(-1, 1, (batch_size, *shape)).astype(np.float32)
        return parallel.global_batch(mesh, {"image": x})

    start = time.perf_counter()
    state, metrics = step_fn(state, batch())
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        b = batch()
        start = time.perf_counter()
        state, metrics = step_fn(state, b)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    print(
        json.dumps(
            {
                "config": args.config,
                "params": count_params(model, shape),
                "batch_size": batch_size,
                "devices": [str(dev) for dev in jax.devices()],
                "machine": f"{platform.machine()}, {jax.device_count()} device(s), "
                f"{jax.devices()[0].device_kind}",
                "jax": jax.__version__,
                "first_step_s": round(compile_s, 2),
                "steps_per_s": round(1.0 / median, 4),
                "images_per_s": round(batch_size / median, 2),
                "step_times_s": [round(t, 3) for t in times],
            }
        )
    )


if __name__ == "__main__":
    main()
