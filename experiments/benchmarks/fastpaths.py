"""Each fast path measured against the baseline: one `experiments.benchmarks.run` process per
variant, on the same model and batch, one after the other.

    python -m experiments.benchmarks.fastpaths --model cifar10 --batch 8 \
        --variants baseline,bfloat16,scan4,donate,xla_xnnpack \
        --out experiments/results/benchmarks/fastpaths_cifar10_b8.json
    python -m experiments.benchmarks.fastpaths --list

A variant is extra `run` arguments (a compute dtype, several steps per dispatch, a model option)
or extra XLA flags. The baseline runs first and again last, so that drift of the machine's load
between the two shows in the table; with --repeats N the whole sequence runs N times round-robin
and each variant's timed steps are pooled. Prints a Markdown table of each variant's train and
forward step time and its speed-up over the baseline (above 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# name: (run arguments, benchmarks it applies to, what it is)
VARIANTS: dict[str, tuple[list[str], str, str]] = {
    "baseline": ([], "train,forward", "the library's defaults: float32, one step per dispatch"),
    "bfloat16": (["--dtype", "bfloat16"], "train,forward", "bfloat16 compute, float32 params"),
    "donate": (["--donate", "yes"], "train", "train state donated (the default on GPU/TPU)"),
    "no_donate": (["--donate", "no"], "train", "train state not donated (the default on CPU)"),
    "scan2": (["--scan", "2"], "train", "2 train steps per dispatch (lax.scan)"),
    "scan4": (["--scan", "4"], "train", "4 train steps per dispatch (lax.scan)"),
    "remat_full": (["--model_option", "remat=full"], "train", "UNet remat='full'"),
    "remat_dots": (["--model_option", "remat=dots"], "train", "UNet remat='dots'"),
    "jaxlib_default": (
        ["--no_cpu_flags"],
        "train,forward",
        "without diffusion_jax.perf.CPU_XLA_FLAGS: convolutions through YNNPACK, jaxlib's default",
    ),
    "xla_no_ynn_conv_dot": (
        [
            "--xla_flags=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"
        ],
        "train,forward",
        "neither convolutions nor matmuls through YNNPACK",
    ),
    "xla_no_ynn_reduce": (
        ["--xla_flags=--xla_cpu_experimental_ynn_fusion_type=-reduce"],
        "train,forward",
        "reductions not through YNNPACK",
    ),
    "xla_no_ynn_conv_reduce": (
        ["--xla_flags=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce"],
        "train,forward",
        "neither convolutions nor reductions through YNNPACK",
    ),
    "xla_no_ynn_conv_onednn": (
        [
            "--xla_flags=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution "
            "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
        ],
        "train,forward",
        "convolutions not through YNNPACK; oneDNN custom calls on",
    ),
    "xla_no_ynn_conv_xnn": (
        [
            "--xla_flags=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution "
            "--xla_cpu_experimental_xnn_fusion_type=individual_convolution"
        ],
        "train,forward",
        "convolutions through XNNPACK instead of YNNPACK",
    ),
    "threefry_not_partitionable": (
        ["--jax_config", "jax_threefry_partitionable=false"],
        "train",
        "jax_threefry_partitionable=False: another random stream, cheaper on one CPU device",
    ),
    "dropout0": (
        ["--model_option", "dropout=0.0"],
        "train",
        "diagnostic, not a fast path: dropout off (what its random bits and masks cost)",
    ),
    "xla_xnnpack": (
        ["--xla_flags=--xla_cpu_use_xnnpack=true"],
        "train,forward",
        "--xla_cpu_use_xnnpack=true",
    ),
    "xla_xnn_fusion": (
        ["--xla_flags=--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce"],
        "train,forward",
        "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    ),
    "xla_ynn_fusion": (
        ["--xla_flags=--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"],
        "train,forward",
        "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    ),
    "xla_onednn": (
        ["--xla_flags=--xla_cpu_use_onednn=true"],
        "train,forward",
        "--xla_cpu_use_onednn=true",
    ),
    "xla_onednn_fusion": (
        ["--xla_flags=--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce"],
        "train,forward",
        "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
    ),
    "xla_onednn_custom_call": (
        ["--xla_flags=--xla_cpu_experimental_onednn_custom_call=true"],
        "train,forward",
        "--xla_cpu_experimental_onednn_custom_call=true",
    ),
    "xla_single_thread_eigen": (
        ["--xla_flags=--xla_cpu_multi_thread_eigen=false"],
        "train,forward",
        "--xla_cpu_multi_thread_eigen=false",
    ),
    "xla_no_thunks": (
        ["--xla_flags=--xla_cpu_use_thunk_runtime=false"],
        "train,forward",
        "--xla_cpu_use_thunk_runtime=false (the pre-thunk runtime)",
    ),
    "xla_region_copy_insertion": (
        ["--xla_flags=--xla_cpu_copy_insertion_use_region_analysis=true"],
        "train,forward",
        "--xla_cpu_copy_insertion_use_region_analysis=true",
    ),
    "xla_concurrency_scheduler": (
        ["--xla_flags=--xla_cpu_enable_concurrency_optimized_scheduler=true"],
        "train,forward",
        "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    ),
    "xla_fast_math": (
        ["--xla_flags=--xla_cpu_enable_fast_math=true"],
        "train,forward",
        "--xla_cpu_enable_fast_math=true",
    ),
}


def run_variant(name: str, args, tmp: Path) -> dict:
    extra, whats, _ = VARIANTS[name]
    out = tmp / f"{name}.json"
    cmd = [sys.executable, "-m", "experiments.benchmarks.run", "--model", args.model,
           "--batch", str(args.batch), "--what", whats, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--label", f"fastpath {name}", "--out", str(out),
           *args.run_args, *extra]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    print(f"[fastpaths] {name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode:
        return {"variant": name, "error": done.stderr.strip()[-3000:]}
    record = json.loads(out.read_text())
    record["variant"] = name
    return record


def pool_records(records: list[dict]) -> dict:
    """One record of a variant run several times: each benchmark's timed steps pooled."""
    from experiments.benchmarks.run import pool_rounds

    good = [r for r in records if "error" not in r]
    if not good:
        return records[0]
    pooled = json.loads(json.dumps(good[0]))
    for what, result in pooled["results"].items():
        result["step"] = pool_rounds([r["results"][what]["step"] for r in good])
        result["images_per_s"] = pooled["batch"] / result["step"]["median_s"]
    pooled["repeats"] = len(good)
    return pooled


def table(records: list[dict]) -> str:
    """Markdown: variant, train and forward medians (min-max), speed-up over the first row."""
    base = records[0]["results"]
    rows = [
        "| variant | train step, ms (min-max) | train speed-up | forward, ms (min-max) | "
        "forward speed-up | XLA GFLOP per train step | XLA temp. buffers, train, MiB | "
        "other load, cores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rec in records:
        if "error" in rec:
            err = rec["error"].strip().splitlines()[-1][:120]
            rows.append(f"| {rec['variant']} | failed: {err} | | | | | | |")
            continue
        cells = [rec["variant"]]
        for what in ("train", "forward"):
            r = rec["results"].get(what)
            if r is None:
                cells += ["", ""]
                continue
            s = r["step"]
            cells.append(
                f"{s['median_s'] * 1e3:.0f} ({s['min_s'] * 1e3:.0f}-{s['max_s'] * 1e3:.0f})"
            )
            b = base.get(what)
            cells.append(f"{b['step']['median_s'] / s['median_s']:.2f}x" if b else "")
        train = rec["results"].get("train") or {}
        flops = train.get("flops_per_step_xla")
        cells.append(f"{flops / 1e9:.1f}" if flops else "")
        temp = (train.get("xla_memory") or {}).get("temp_bytes")
        cells.append(f"{temp / 2**20:.0f}" if temp is not None else "")
        others = [r["step"].get("others_cores") for r in rec["results"].values()]
        cells.append("/".join("?" if o is None else f"{o:.2f}" for o in others))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar10")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--variants", default="baseline,bfloat16,scan4,donate")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the whole sequence this many times, round-robin, and pool each variant's "
        "timed steps (drift of the machine's speed then reaches every variant alike)",
    )
    p.add_argument("--run_args", nargs=argparse.REMAINDER, default=[], help="passed to run")
    p.add_argument("--list", action="store_true")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.list:
        for name, (_, whats, what) in VARIANTS.items():
            print(f"{name:24s} {whats:14s} {what}")
        return
    names = [n for n in args.variants.split(",") if n != "baseline"]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"Unknown variants {unknown}; see --list.")
    with tempfile.TemporaryDirectory() as tmp:
        if args.repeats > 1:
            order = ["baseline", *names]
            rounds = [[run_variant(n, args, Path(tmp)) for n in order] for _ in range(args.repeats)]
            records = [pool_records([r[i] for r in rounds]) for i in range(len(order))]
        else:
            records = [run_variant("baseline", args, Path(tmp))]
            records += [run_variant(n, args, Path(tmp)) for n in names]
            if names:
                records.append(run_variant("baseline", args, Path(tmp)))
                records[-1]["variant"] = "baseline (again)"
    text = table(records)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"records": records, "table": text}, indent=1) + "\n")


if __name__ == "__main__":
    main()
