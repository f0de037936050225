"""What compiling the train step costs a fresh process, and what the persistent compilation cache
and an ahead-of-time serialized executable save.

    python -m experiments.benchmarks.compile_cache --model cifar10 --batch 8

Four fresh processes, one after the other, each building the train step of --model:
`plain` (no cache), `cache_cold` and `cache_warm` (JAX's persistent compilation cache in a new
temporary directory, via `diffusion_jax.perf.enable_compilation_cache`: the first writes it, the
second reads it), and `aot_load`, which loads the executable `cache_cold` serialized with
`jax.experimental.serialize_executable` instead of compiling. Each reports lowering (tracing to
StableHLO, never cached), compilation (or loading) and its first step.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child(args) -> dict:
    import jax
    import numpy as np

    from diffusion_jax import parallel, perf
    from diffusion_jax.training import step as step_lib
    from experiments.benchmarks import ours

    if args.cache_dir:
        perf.enable_compilation_cache(args.cache_dir, min_compile_time_s=0.0)
    config, shape = ours.load_model_config(args.model)
    mesh, _, step, _, init = ours.train_step_setup(config, shape, args.batch)
    step_fn = step_lib.compile_train_step(step, mesh)
    state = init()
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, *shape)).astype(np.float32)
    batch = parallel.global_batch(mesh, {"image": x})
    out = {"mode": args.mode}
    start = time.perf_counter()
    lowered = step_fn.lower(state, batch)
    out["lower_s"] = time.perf_counter() - start
    from jax.experimental import serialize_executable

    start = time.perf_counter()
    if args.mode == "aot_load":
        payload, in_tree, out_tree = pickle.loads(Path(args.executable).read_bytes())
        compiled = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    else:
        compiled = lowered.compile()
    out["compile_s"] = time.perf_counter() - start
    if args.mode == "cache_cold" and args.executable:
        Path(args.executable).write_bytes(pickle.dumps(serialize_executable.serialize(compiled)))
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    out["loss"] = float(jax.block_until_ready(metrics)["loss"])
    out["first_step_s"] = time.perf_counter() - start
    return out


def run(model: str, batch: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache, exe = str(Path(tmp) / "cache"), str(Path(tmp) / "train_step.pkl")
        for mode, cache_dir in (("plain", ""), ("cache_cold", cache), ("cache_warm", cache),
                                ("aot_load", "")):  # fmt: skip
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
            cmd = [sys.executable, "-m", "experiments.benchmarks.compile_cache", "--child",
                   "--mode", mode, "--model", model, "--batch", str(batch),
                   "--cache_dir", cache_dir, "--executable", exe]  # fmt: skip
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
            wall = time.perf_counter() - start
            if done.returncode:
                results[mode] = {"error": done.stderr.strip()[-2000:]}
                continue
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            results[mode]["process_wall_s"] = wall
    losses = {r["loss"] for r in results.values() if "loss" in r}
    return {"model": model, "batch": batch, "modes": results, "same_loss": len(losses) == 1}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="plain", help=argparse.SUPPRESS)
    p.add_argument("--cache_dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--executable", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    print(json.dumps(child(args) if args.child else run(args.model, args.batch)))


if __name__ == "__main__":
    main()
