"""The benchmark suite in one command: our train step, forward pass, samplers and FID Inception,
side by side with the same U-Net in PyTorch, written to JSON.

    python -m experiments.benchmarks.run --model cifar10 --batch 8 \
        --what train,forward,sample,inception,peer --out experiments/results/benchmarks/x.json
    python -m experiments.benchmarks.run --model tiny --batch 8 --what train,forward --steps 3
    python -m experiments.benchmarks.run --model cifar10 --batch 8 --what train --scan 4 \
        --dtype bfloat16 --model_option remat=full --xla_flags=--xla_cpu_use_xnnpack=true

--model names a file of experiments/configs (cifar10, celebahq256, lsun_church, digits, tiny,
...); --model_option overrides any UNet attribute (ch=32, remat=full, attention_impl=cudnn).
Every benchmark compiles ahead of time (`jit(f).lower(...).compile()`, both times reported),
discards --warmup calls and reports the median, min and max of --steps calls, images/s, XLA's
FLOPs per step (its cost analysis of the compiled executable, checked against a count of the
jaxpr's matmuls and convolutions), the achieved FLOP/s and its share of the device's peak (the
vendor's figure for GPUs and TPUs; on a CPU, a measured matmul), and peak memory.

`peer` runs `experiments.benchmarks.peer` (diffusers' UNet2DModel in the DDPM layout, the same
parameter count) in a child process on the same batch with the same number of threads, in each
of --peer_layouts, and records ratio = our images/s / PyTorch's (its fastest layout): above 1 we
are faster. `scaling` and `cache` run `experiments.benchmarks.scaling` and `.compile_cache`.

--threads N pins this process and its children to N CPUs (sched_setaffinity, before JAX starts:
XLA sizes its thread pool from the CPUs it may use) and calls torch.set_num_threads(N).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WHATS = ("train", "forward", "sample", "inception", "peer", "scaling", "cache")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="cifar10", help="an experiments/configs name or .py file")
    p.add_argument("--batch", type=int, default=8, help="global batch size")
    p.add_argument("--what", default="train,forward,peer", help=f"comma list of {WHATS}")
    p.add_argument("--steps", type=int, default=5, help="timed calls per benchmark")
    p.add_argument("--warmup", type=int, default=1, help="discarded calls after the first")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="compute dtype")
    p.add_argument("--scan", type=int, default=1, help="train steps per dispatch (lax.scan)")
    p.add_argument(
        "--donate",
        choices=("auto", "yes", "no"),
        default="auto",
        help="donate the train state (auto: the library's default, step.donate_by_default: "
        "on accelerators, not on CPUs)",
    )
    p.add_argument(
        "--model_option", action="append", default=[], metavar="KEY=VALUE", help="UNet attribute"
    )
    p.add_argument("--sample_steps", type=int, default=10, help="respaced steps per chain")
    p.add_argument("--samplers", default="ancestral,ddim")
    p.add_argument(
        "--jax_config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="jax.config.update(KEY, VALUE) before anything is traced",
    )
    p.add_argument(
        "--no_cpu_flags",
        action="store_true",
        help="do not add diffusion_jax.perf.CPU_XLA_FLAGS (as `diffusion-jax` does) to XLA_FLAGS",
    )
    p.add_argument("--threads", type=int, default=0, help="CPUs to use (0: all usable)")
    p.add_argument(
        "--xla_flags", action="append", default=[], help="appended to XLA_FLAGS before JAX starts"
    )
    p.add_argument("--peer_layouts", default="nchw,channels_last")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with peer: time ours and the peer alternately this many times (pooled)",
    )
    p.add_argument("--peer_python", default=sys.executable, help="interpreter with torch")
    p.add_argument("--scaling_devices", default="1,2,4,8")
    p.add_argument(
        "--quiet_wait",
        type=float,
        default=0.0,
        help="before each benchmark, wait up to this many seconds for other processes to use "
        "under 0.3 CPU cores",
    )
    p.add_argument(
        "--max_others_cores",
        type=float,
        default=None,
        help="time again (up to --retries times, waiting up to --quiet_wait s for quiet) while "
        "other processes used more CPU cores than this during a timing",
    )
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--label", default="", help="a free-text tag stored with the results")
    p.add_argument("--out", default="", help="write the JSON here (default: print it)")
    args = p.parse_args(argv)
    unknown = set(args.what.split(",")) - set(WHATS)
    if unknown:
        p.error(f"unknown --what {sorted(unknown)}; choose from {WHATS}")
    if args.batch < 1 or args.steps < 1 or args.scan < 1:
        p.error("--batch, --steps and --scan must be >= 1")
    return args


def parse_options(items: list[str]) -> dict[str, Any]:
    """["remat=full", "ch=32", "ch_mult=1,2"] -> {"remat": "full", "ch": 32, "ch_mult": (1, 2)}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--model_option {item!r}: expected KEY=VALUE")
        out[key] = _parse_value(raw)
    return out


def _parse_value(raw: str):
    if "," in raw:
        return tuple(_parse_value(v) for v in raw.split(",") if v)
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def set_up_process(args) -> int:
    """CPU affinity and XLA_FLAGS, before JAX is imported; returns the thread count."""
    if args.threads:
        cpus = sorted(os.sched_getaffinity(0))
        if args.threads > len(cpus):
            raise SystemExit(f"--threads {args.threads}: only {len(cpus)} CPUs are usable.")
        os.sched_setaffinity(0, cpus[: args.threads])
    if args.xla_flags:
        flags = [os.environ.get("XLA_FLAGS", ""), *args.xla_flags]
        os.environ["XLA_FLAGS"] = " ".join(f for f in flags if f)
    if not args.no_cpu_flags:
        from diffusion_jax import perf  # imports jax, but XLA reads XLA_FLAGS at backend start

        perf.use_cpu_xla_flags()
    return len(os.sched_getaffinity(0))


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def has_torch(python: str) -> str | None:
    """None if `python` can import torch and diffusers, else the reason it cannot."""
    if python == sys.executable:
        missing = [m for m in ("torch", "diffusers") if importlib.util.find_spec(m) is None]
        return f"{' and '.join(missing)} not installed" if missing else None
    code = "import torch, diffusers"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return None if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def run_peer(args, unet: dict, shape, threads: int, quiet) -> dict[str, Any]:
    reason = has_torch(args.peer_python)
    if reason:
        return {"skipped": f"PyTorch peer not run: {reason} (pip install -e '.[torch]')"}
    out = {}
    for layout in args.peer_layouts.split(","):
        cmd = [
            args.peer_python, "-m", "experiments.benchmarks.peer", "--unet", json.dumps(unet),
            "--image_shape", ",".join(map(str, shape)), "--batch", str(args.batch),
            "--threads", str(threads), "--steps", str(args.steps),
            "--warmup", str(max(args.warmup, 1) + 1), "--layout", layout, "--count_flops",
            "--retries", str(args.retries), "--quiet_wait", str(args.quiet_wait),
        ]  # fmt: skip
        if args.max_others_cores is not None:
            cmd += ["--max_others_cores", str(args.max_others_cores)]
        wait = quiet()
        load = _load()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_child_env())
        if done.returncode:
            out[layout] = {"error": done.stderr.strip()[-2000:]}
            continue
        out[layout] = json.loads(done.stdout.strip().splitlines()[-1])
        out[layout]["loadavg_before"], out[layout]["loadavg_after"] = load, _load()
        out[layout]["quiet_wait"] = wait
    return out


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def pool_rounds(rounds: list[dict]) -> dict[str, Any]:
    """One set of statistics over the timed calls of every round (the worst interference)."""
    times = [t for r in rounds for t in r["times_s"]]
    out = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
        "times_s": times,
    }
    for key in ("others_cores", "steal_cores"):
        values = [r.get(key) for r in rounds if r.get(key) is not None]
        out[key] = max(values) if values else None
    return out


def merge_peer_rounds(peer_rounds: list[dict]) -> dict[str, Any]:
    """The peer's records of each layout with the step statistics pooled over the rounds."""
    merged: dict[str, Any] = {}
    for layout, first in peer_rounds[0].items():
        if "results" not in first:
            merged[layout] = first
            continue
        merged[layout] = dict(first)
        merged[layout]["results"] = {}
        for what, r in first["results"].items():
            steps = [pr[layout]["results"][what]["step"] for pr in peer_rounds
                     if "results" in pr.get(layout, {})]  # fmt: skip
            pooled = dict(r, step=pool_rounds(steps))
            pooled["images_per_s"] = first["batch"] / pooled["step"]["median_s"]
            if r.get("flops_per_step_torch_counter"):
                pooled["achieved_flops_per_s"] = (
                    r["flops_per_step_torch_counter"] / pooled["step"]["median_s"]
                )
            if len(steps) > 1:
                pooled["rounds"] = steps
            merged[layout]["results"][what] = pooled
    return merged


def ratios(results: dict, ours_rounds=None, peer_rounds=None) -> dict[str, Any]:
    """ratio = our images/s / the PyTorch peer's best images/s (pooled over rounds), per
    benchmark; with rounds, also the ratio within each round (its own best layout)."""
    peer = results.get("peer") or {}
    out = {}
    for what in ("train", "forward"):
        ours = results.get(what)
        theirs = _best_layout(peer, what)
        if not ours or not theirs:
            continue
        best = max(theirs, key=theirs.get)
        out[what] = {
            "ratio": ours["images_per_s"] / theirs[best],
            "peer_layout": best,
            "per_layout": {k: ours["images_per_s"] / v for k, v in theirs.items()},
        }
        if ours_rounds and peer_rounds and len(peer_rounds) > 1:
            batch = ours["images_per_s"] * ours["step"]["median_s"]
            per_round = []
            for mine, their_round in zip(ours_rounds[what], peer_rounds, strict=True):
                best_round = _best_layout(their_round, what)
                if best_round:
                    per_round.append(batch / mine["median_s"] / max(best_round.values()))
            out[what]["per_round"] = per_round
            out[what]["median_of_rounds"] = statistics.median(per_round) if per_round else None
    return out


def _best_layout(peer: dict, what: str) -> dict[str, float]:
    return {
        layout: r["results"][what]["images_per_s"]
        for layout, r in peer.items()
        if isinstance(r, dict) and what in r.get("results", {})
    }


def _run_module(module: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", module, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_child_env())
    if done.returncode:
        return {"error": done.stderr.strip()[-2000:], "command": shlex.join(cmd)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    threads = set_up_process(args)
    options = parse_options(args.model_option)

    import jax  # noqa: E402  (after XLA_FLAGS and the affinity are set)

    from experiments.benchmarks import cpuload, measure, ours

    for key, value in parse_options(args.jax_config).items():
        jax.config.update(key, value)
    measure.configure_retries(args.max_others_cores, args.retries, args.quiet_wait)
    config, shape = ours.load_model_config(args.model)
    if args.dtype:
        config.model.dtype = args.dtype
    model = ours.build_model(config, shape, options)
    whats = args.what.split(",")
    record: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "experiments.benchmarks.run", *argv]),
        "label": args.label,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "model": args.model,
        "image_shape": list(shape),
        "params": ours.count_params(model, shape),
        "batch": args.batch,
        "dtype": config.model.dtype,
        "model_options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "threads": threads,
        "jax_config": args.jax_config,
        "environment": measure.environment(),
        "results": {},
    }
    results = record["results"]
    common = dict(steps=args.steps, warmup=args.warmup)

    def quiet() -> dict:
        reading, waited = cpuload.wait_until_quiet(timeout_s=args.quiet_wait)
        return {"others_cores_before": reading, "waited_s": waited}

    def timed(name, fn, *a, **kw):
        wait = quiet()
        load = measure.loadavg()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results[name] = fn(*a, **kw)
        results[name]["loadavg_before"], results[name]["loadavg_after"] = load, measure.loadavg()
        results[name]["quiet_wait"] = wait
        print(f"[bench] {name}: {summary_line(results[name])}", file=sys.stderr, flush=True)

    # Train and forward are compiled once and timed in --rounds rounds, each followed by the
    # PyTorch peer, so that both sides see the same drift of the machine's speed.
    prepared = {}
    if "train" in whats:
        print("[bench] compiling train ...", file=sys.stderr, flush=True)
        prepared["train"] = ours.prepare_train(
            config,
            shape,
            args.batch,
            scan=args.scan,
            donate={"auto": None, "yes": True, "no": False}[args.donate],
            options=options,
        )
    if "forward" in whats:
        print("[bench] compiling forward ...", file=sys.stderr, flush=True)
        prepared["forward"] = ours.prepare_forward(config, shape, args.batch, options=options)
    rounds = args.rounds if "peer" in whats else 1
    ours_rounds: dict[str, list] = {name: [] for name in prepared}
    peer_rounds: list[dict] = []
    for r in range(rounds):
        for name, p in prepared.items():
            wait = quiet()
            if r == 0:
                p.info["first_call_s"] = measure.time_calls(p.call, steps=1, warmup=0)["median_s"]
            step = ours.time_prepared(p, **common)
            step.update(quiet_wait=wait, loadavg=measure.loadavg())
            ours_rounds[name].append(step)
            print(f"[bench] {name} round {r + 1}/{rounds}: {step['median_s'] * 1e3:.1f} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
        if "peer" in whats:
            print(f"[bench] peer (PyTorch) round {r + 1}/{rounds} ...", file=sys.stderr, flush=True)
            peer_rounds.append(run_peer(args, ours.model_attributes(model), shape, threads, quiet))
    for name, p in prepared.items():
        results[name] = ours.finish(p, pool_rounds(ours_rounds[name]))
        if rounds > 1:
            results[name]["rounds"] = ours_rounds[name]
        print(f"[bench] {name}: {summary_line(results[name])}", file=sys.stderr, flush=True)
    if "peer" in whats:
        results["peer"] = merge_peer_rounds(peer_rounds)
        record["ratio_vs_peer"] = ratios(results, ours_rounds, peer_rounds)
        for what, r in record["ratio_vs_peer"].items():
            print(f"[bench] ours/PyTorch {what}: {r['ratio']:.2f}", file=sys.stderr, flush=True)
    if "sample" in whats:
        for sampler in args.samplers.split(","):
            timed(f"sample_{sampler}", ours.bench_sample, config, shape, args.batch,
                  sampler=sampler, sample_steps=args.sample_steps, options=options,
                  **common)  # fmt: skip
    if "inception" in whats:
        timed("inception", ours.bench_inception, args.batch, shape, **common)
    if "scaling" in whats:
        print("[bench] scaling ...", file=sys.stderr, flush=True)
        results["scaling"] = _run_module(
            "experiments.benchmarks.scaling", ["--devices", args.scaling_devices]
        )
    if "cache" in whats:
        print("[bench] compile cache ...", file=sys.stderr, flush=True)
        results["cache"] = _run_module(
            "experiments.benchmarks.compile_cache",
            ["--model", args.model, "--batch", str(args.batch)],
        )
    record["peak_memory_process"] = measure.peak_memory(jax.devices()[0])
    text = json.dumps(record, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"[bench] wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return record


def summary_line(r: dict) -> str:
    step = r["step"]
    parts = [
        f"compile {r['compile']['lower_s'] + r['compile']['compile_s']:.1f} s",
        f"step {step['median_s'] * 1e3:.1f} ms (min {step['min_s'] * 1e3:.1f}, "
        f"max {step['max_s'] * 1e3:.1f})",
    ]
    if r.get("images_per_s"):
        parts.append(f"{r['images_per_s']:.1f} img/s")
    if r.get("achieved_flops_per_s"):
        parts.append(f"{r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s")
    if r.get("utilisation"):
        parts.append(f"{100 * r['utilisation']:.0f}% of peak")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
