"""XLA's memory for the 256x256 train step with each U-Net remat mode, donated or not: the
step is compiled, never run, so a batch that would take minutes per step here costs only its
compilation (about 40 s each on two CPU cores).

    python -m experiments.benchmarks.remat_memory --batch 4 > remat_memory_lsun256_b4.jsonl

One JSON line per (remat, donate): XLA's temporary and total buffer sizes (`measure.xla_memory`)
and its FLOP count, on this process's first device.
"""

from __future__ import annotations

import argparse
import json

import jax

from diffusion_jax.training import step as step_lib
from experiments.benchmarks import measure, ours


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lsun_church")
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    config, shape = ours.load_model_config(args.model)
    images = {"image": jax.ShapeDtypeStruct((args.batch, *shape), jax.numpy.float32)}
    for remat in ("", "dots", "full"):
        options = {"remat": remat} if remat else None
        mesh, _, step, abstract, _ = ours.train_step_setup(config, shape, args.batch, options)
        for donate in (True, False):
            jitted = step_lib.compile_train_step(step, mesh, donate=donate)
            compiled = jitted.lower(abstract, images).compile()
            m = measure.xla_memory(compiled)
            row = {"model": args.model, "remat": remat or "none", "donate": donate,
                   "batch": args.batch, "temp_MiB": round(m["temp_bytes"] / 2**20),
                   "total_MiB": round(m["total_bytes"] / 2**20),
                   "gflop": round(measure.cost_flops(compiled) / 1e9, 1)}  # fmt: skip
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
