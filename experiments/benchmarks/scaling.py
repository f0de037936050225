"""The train step on 1, 2, 4, 8 simulated CPU devices: the same update on each, and its time.

    python -m experiments.benchmarks.scaling --devices 1,2,4,8 --model tiny --batch 16 --steps 4

Each device count runs in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=N (the flag must be set before JAX starts), the
same config, seed and global batches, `step.compile_train_step` splitting each batch over the N
devices. The loss of every step and the parameters after the last one are compared with the
1-device run (max |difference| <= --tol). On one machine the simulated devices share its cores,
so the times show the cost of partitioning and of the gradient all-reduce at a fixed global
batch, not weak or strong scaling on real devices.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child(args) -> dict:
    """One device count (this process's XLA_FLAGS): loss per step, step times, params saved."""
    import jax
    import numpy as np

    from diffusion_jax import parallel
    from diffusion_jax.training import step as step_lib
    from experiments.benchmarks import measure, ours

    config, shape = ours.load_model_config(args.model)
    mesh, _, step, _, init = ours.train_step_setup(config, shape, args.batch)
    step_fn = step_lib.compile_train_step(step, mesh)
    state = init()
    rng = np.random.default_rng(0)
    batches = [
        parallel.global_batch(
            mesh, {"image": rng.uniform(-1, 1, (args.batch, *shape)).astype(np.float32)}
        )
        for _ in range(args.steps)
    ]
    compiled, compile_times = measure.compile_timed(step_fn, state, batches[0])
    losses, times = [], []
    for b in batches:
        start = time.perf_counter()
        state, metrics = compiled(state, b)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
        losses.append(float(metrics["loss"]))
    leaves = jax.tree_util.tree_leaves(jax.device_get(state.params))
    np.savez(args.params_out, *[np.asarray(x) for x in leaves])
    return {
        "devices": jax.device_count(),
        "compile": compile_times,
        "first_step_s": times[0],
        "step": measure.summarize(times[1:] or times),
        "losses": losses,
    }


def run(devices: list[int], model: str, batch: int, steps: int, tol: float) -> dict:
    """Every device count in its own process; compared with the first (1 device)."""
    out = {"model": model, "batch": batch, "steps": steps, "tol": tol, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for n in devices:
            if batch % n:
                raise SystemExit(f"--batch {batch} does not split over {n} devices.")
            env = dict(os.environ)
            flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
            env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
            env["JAX_PLATFORMS"] = "cpu"
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
            params = Path(tmp) / f"params_{n}.npz"
            cmd = [sys.executable, "-m", "experiments.benchmarks.scaling", "--child",
                   "--model", model, "--batch", str(batch), "--steps", str(steps),
                   "--params_out", str(params)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
            if done.returncode:
                raise SystemExit(f"{n} devices failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["params"] = _load(params)
            if reference is None:
                reference = result
            result["max_abs_loss_diff"] = max(
                abs(a - b) for a, b in zip(result["losses"], reference["losses"], strict=True)
            )
            result["max_abs_param_diff"] = max(
                float(abs(a - b).max())
                for a, b in zip(result["params"], reference["params"], strict=True)
            )
            result["same_as_1_device"] = (
                result["max_abs_loss_diff"] <= tol and result["max_abs_param_diff"] <= tol
            )
            out["runs"].append(result)
        for result in out["runs"]:
            del result["params"]
    out["all_same"] = all(r["same_as_1_device"] for r in out["runs"])
    out["note"] = (
        "simulated CPU devices share this machine's cores: not weak or strong scaling; the time "
        "shows the cost of partitioning and all-reduce at a fixed global batch"
    )
    return out


def _load(path: Path):
    import numpy as np

    with np.load(path) as f:
        return [f[k].astype(np.float64) for k in sorted(f.files, key=lambda s: int(s[4:]))]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--params_out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    devices = [int(n) for n in args.devices.split(",")]
    if devices[0] != 1:
        devices = [1, *devices]
    print(json.dumps(run(devices, args.model, args.batch, args.steps, args.tol)))


if __name__ == "__main__":
    main()
