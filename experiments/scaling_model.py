"""A scaling model on paper: gradient all-reduce against compute for DDPM's U-Nets at 8-256 chips.

    python experiments/scaling_model.py              # -> experiments/results/scaling_model.md
    python experiments/scaling_model.py --compiled   # + FLOPs of the compiled step (minutes)
    python experiments/scaling_model.py --memory     # + XLA's per-device memory under FSDP

What is computed here, on the CPU (no accelerator is involved):
- the parameter counts of the CIFAR-10 and 256x256 networks (`jax.eval_shape`, no compilation);
- the FLOPs of one training image: XLA's cost analysis of the whole jitted train step
  (`step.make_train_step`: forward, backward, Adam and the EMA) at batch 1 and 2, per image
  being the difference, so that the optimizer's per-step cost drops out; of the lowered HLO, and
  with --compiled also of the compiled (optimised) one;
- the bytes every chip sends per step: data parallelism all-reduces the float32 gradient
  (4 bytes x parameters); a ring or torus all-reduce moves 2 (N - 1) / N of it through each
  chip; FSDP (ZeRO-3) all-gathers the parameters for the forward and the backward pass and
  reduce-scatters the gradient, 3 (N - 1) / N;
- from those, and from the vendor specs below (not measurements), the time of a step's compute
  and of its all-reduce at 8, 64 and 256 chips, and the efficiency compute / (compute + comm)
  (no overlap) and compute / max(compute, comm) (full overlap of the all-reduce with backward);
- the train state per device under FSDP (shard shapes), and with --memory XLA's memory analysis
  of the step compiled for 8 CPU devices, replicated and with fsdp=8.

Every number that is not computed is an assumption, listed in the output with its source.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 CPU devices for --memory (the FSDP compilation); the cost analysis uses one of them.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from diffusion_jax import configs, parallel, setup  # noqa: E402
from diffusion_jax.training.state import init_state  # noqa: E402
from diffusion_jax.training.step import compile_train_step, make_train_step  # noqa: E402

CHIPS = (8, 64, 256)
MFU = 0.40  # assumed share of peak FLOP/s that the U-Net step reaches (not measured here)
LATENCY_S = 5e-6  # assumed per-message latency of one all-reduce stage
SPEC = "vendor spec"


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    peak_flops: float  # bf16, dense, per chip
    fast_bw: float  # bytes/s one way per chip, within the fast domain
    fast_domain: int  # chips that share the fast links (0: all of them)
    slow_bw: float = 0.0  # bytes/s one way per chip between fast domains
    source: str = ""


SYSTEMS = (
    System(
        "TPU v4 (ICI, 3-D torus)",
        275e12,
        1.1e15 / 4096,
        0,
        source=f"{SPEC}: Cloud TPU v4 page, 275 TFLOPs bf16 per chip; 'all-reduce bandwidth per "
        "Pod 1.1 PB/s' over 4,096 chips = 269 GB/s per chip",
    ),
    System(
        "TPU v5p (ICI, 3-D torus)",
        459e12,
        1200e9 / 2,
        0,
        source=f"{SPEC}: Cloud TPU v5p page, 459 TFLOPs bf16 per chip; bidirectional ICI "
        "1,200 GB/s per chip = 600 GB/s each way",
    ),
    System(
        "H100 SXM, NVLink 8/node + InfiniBand NDR",
        989e12,
        900e9 / 2,
        8,
        slow_bw=400e9 / 8,
        source=f"{SPEC}: NVIDIA H100 SXM, 989 TFLOPS dense bf16, NVLink 4 900 GB/s per GPU "
        "(450 GB/s each way); one ConnectX-7 NDR 400 Gb/s (50 GB/s) NIC per GPU between nodes",
    ),
)


def step_cost(config, shape, batch: int, *, compiled: bool) -> dict:
    """XLA's cost analysis of the jitted train step at `batch` on one CPU device: "flops" of the
    lowered HLO, and "compiled_flops" of the compiled one when `compiled`."""
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    parts = setup.diffusion_parts(config, shape)
    abstract, _ = init_state(parts, mesh)
    step = jax.jit(make_train_step(parts))
    batch_spec = {"image": jax.ShapeDtypeStruct((batch, *shape), jax.numpy.float32)}
    lowered = step.lower(abstract, batch_spec)
    params = sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(abstract.params))
    out = {"flops": _flops(lowered.cost_analysis()), "params": params, "abstract": abstract}
    if compiled:
        out["compiled_flops"] = _flops(lowered.compile().cost_analysis())
    return out


def _flops(cost) -> float:
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def allreduce_time(system: System, n: int, nbytes: float) -> float:
    """Seconds for an all-reduce of `nbytes` over `n` chips, bandwidth-bound plus latency.

    One fast domain (a TPU slice, or GPUs of one node): 2 (n - 1) / n * bytes / bw. Several
    nodes: reduce-scatter in the node over NVLink, all-reduce of each GPU's 1/8 across nodes on
    its own NIC, all-gather in the node (hierarchical, as NCCL does it)."""
    domain = system.fast_domain or n
    if n <= domain:
        return 2 * (n - 1) / n * nbytes / system.fast_bw + 2 * math.log2(n) * LATENCY_S
    nodes = n // domain
    inside = 2 * (domain - 1) / domain * nbytes / system.fast_bw
    across = 2 * (nodes - 1) / nodes * (nbytes / domain) / system.slow_bw
    stages = 2 * math.log2(domain) + 2 * math.log2(nodes)
    return inside + across + stages * LATENCY_S


def fsdp_state_bytes(abstract, size: int) -> int:
    """Bytes of params, EMA and Adam state on one device when split `size` ways (fsdp_spec)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(abstract):
        spec = parallel.fsdp_spec(tuple(leaf.shape), size)
        shape = [
            d // size if i < len(spec) and spec[i] == parallel.FSDP_AXIS else d
            for i, d in enumerate(leaf.shape)
        ]
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def compiled_memory(config, shape, fsdp: int, batch: int) -> dict:
    """XLA's per-device memory analysis of the train step compiled for 8 CPU devices on a
    ('data', 'fsdp') mesh, as `train.train` compiles it (state donated)."""
    mesh = parallel.make_mesh(fsdp)
    parts = setup.diffusion_parts(config, shape)
    abstract, _ = init_state(parts, mesh)
    shardings = jax.tree_util.tree_map(lambda a: a.sharding, abstract)
    step = compile_train_step(make_train_step(parts), mesh, shardings)
    batch_spec = {
        "image": jax.ShapeDtypeStruct(
            (batch, *shape), jax.numpy.float32, sharding=parallel.batch_sharding(mesh)
        )
    }
    stats = step.lower(abstract, batch_spec).compile().memory_analysis()
    return {
        "state": parallel.per_device_bytes(abstract),
        "arguments": stats.argument_size_in_bytes,
        "temp": stats.temp_size_in_bytes,
    }


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def build_report(compiled: bool, memory: bool = False) -> str:
    models = [
        ("CIFAR-10 32x32 (`cifar10`)", "cifar10", (32, 32, 3), 128),
        ("256x256 (`celebahq256`, LSUN)", "celebahq256", (256, 256, 3), 64),
    ]
    lines = [
        "# Scaling model: gradient all-reduce against compute",
        "",
        "Written by `python experiments/scaling_model.py"
        + (" --compiled" if compiled else "")
        + (" --memory" if memory else "")
        + f"` (jax {jax.__version__}, on the CPU). The parameter counts and FLOPs are computed; "
        "the bandwidths and peak FLOP/s are vendor specs and the efficiency is a model on "
        "paper, not a measurement: no accelerator was used.",
        "",
        "## Per-image cost and per-step traffic (computed)",
        "",
        "| network | parameters | train-step GFLOP per image (XLA cost analysis, lowered"
        + (" / compiled" if compiled else "")
        + ") | optimizer + EMA GFLOP per step | gradient bytes (float32) | all-reduce bytes "
        "through each chip at N=256 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = []
    for label, name, shape, ddpm_batch in models:
        config = configs.get_config(name)
        one = step_cost(config, shape, 1, compiled=compiled)
        two = step_cost(config, shape, 2, compiled=compiled)
        per_image = two["flops"] - one["flops"]
        fixed = one["flops"] - per_image
        shown = f"{per_image / 1e9:.1f}"
        if compiled:
            shown += f" / {(two['compiled_flops'] - one['compiled_flops']) / 1e9:.1f}"
        grad_bytes = 4 * one["params"]
        lines.append(
            f"| {label} | {one['params']:,} | {shown} | {fixed / 1e9:.2f} | "
            f"{grad_bytes / 1e6:.0f} MB | {2 * 255 / 256 * grad_bytes / 1e6:.0f} MB |"
        )
        rows.append((label, per_image, grad_bytes, ddpm_batch, one["abstract"]))
    lines += [
        "",
        "The cost analysis counts a multiply-add as 2 FLOPs and covers the forward pass, the "
        "backward pass (about twice the forward) and the loss, in the HLO as lowered and "
        + (
            "as compiled (optimised) for the CPU."
            if compiled
            else "before XLA's optimisations (`--compiled` adds the compiled count: minutes)."
        )
        + " A forward pass is about a third of the per-image figure.",
        "",
        "## Expected efficiency (model)",
        "",
        f"Weak scaling: each chip keeps the per-chip batch of DDPM's recipe on 8 chips (CIFAR-10 "
        f"128 / 8 = 16, 256x256 64 / 8 = 8), so the global batch grows with N. Compute time = "
        f"per-chip batch x FLOP per image / (peak x {MFU:.0%}). All-reduce time = float32 "
        "gradient through a bandwidth-optimal all-reduce (hierarchical across GPU nodes) plus "
        f"{LATENCY_S * 1e6:.0f} us per stage. 'no overlap' = compute / (compute + all-reduce); "
        "'overlap' = compute / max(compute, all-reduce), the bound when the all-reduce runs "
        "during the backward pass.",
        "",
        "| network | system | N | per-chip batch | compute ms | all-reduce ms | "
        "efficiency, no overlap | efficiency, overlap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, per_image, grad_bytes, ddpm_batch, _ in rows:
        per_chip = ddpm_batch // 8
        for system in SYSTEMS:
            for n in CHIPS:
                compute = per_chip * per_image / (system.peak_flops * MFU)
                comm = allreduce_time(system, n, grad_bytes)
                lines.append(
                    f"| {label} | {system.name} | {n} | {per_chip} | {_fmt_ms(compute)} | "
                    f"{_fmt_ms(comm)} | {compute / (compute + comm):.0%} | "
                    f"{compute / max(compute, comm):.0%} |"
                )
    lines += [
        "",
        "Strong scaling at DDPM's own global batch (128 for CIFAR-10, 64 at 256x256), where it "
        "splits into whole images per chip:",
        "",
        "| network | system | N | per-chip batch | compute ms | all-reduce ms | "
        "efficiency, no overlap | efficiency, overlap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, per_image, grad_bytes, ddpm_batch, _ in rows:
        for system in SYSTEMS:
            for n in (8, 64):
                per_chip = ddpm_batch // n
                compute = per_chip * per_image / (system.peak_flops * MFU)
                comm = allreduce_time(system, n, grad_bytes)
                lines.append(
                    f"| {label} | {system.name} | {n} | {per_chip} | {_fmt_ms(compute)} | "
                    f"{_fmt_ms(comm)} | {compute / (compute + comm):.0%} | "
                    f"{compute / max(compute, comm):.0%} |"
                )
    lines += [
        "",
        "So strong scaling stops early: the per-chip batch is 16 / 2 / 0.5 (CIFAR-10) and "
        "8 / 1 / 0.25 (256x256) at 8 / 64 / 256 chips. A batch must split into whole "
        "examples per chip (`training.batch_size` a multiple of the device count; the run "
        "refuses otherwise), so "
        "beyond 128 (64) chips the global batch has to grow, with the learning rate retuned; and "
        "at 1-2 images per chip the all-reduce of the whole gradient costs as much as on 16, "
        "so the efficiency falls with the per-chip batch.",
        "",
        "## FSDP: train state per device (computed)",
        "",
        "Parameters, EMA parameters and Adam's two moments, float32, split by "
        "`parallel.fsdp_spec` (each array of 4,096 elements or more along its largest "
        "dimension that the FSDP size divides; smaller ones replicated). FSDP moves "
        "3 (N - 1) / N of the parameter bytes through each chip per step instead of "
        "2 (N - 1) / N (1.5x the all-reduce traffic) and keeps 1/N of the state. At 256 "
        "ways the 128-channel kernels have no dimension that 256 divides and stay whole, so "
        "the state grows again: beyond 128-way FSDP, use fsdp <= 128 and split the rest of "
        "the devices over 'data'.",
        "",
        "| network | fsdp=1 (replicated) | fsdp=8 | fsdp=64 | fsdp=256 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, _, _, _, abstract in rows:
        cells = [f"{fsdp_state_bytes(abstract, n) / 2**20:,.1f} MiB" for n in (1, 8, 64, 256)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if memory:
        lines += [
            "",
            "XLA's memory analysis of the train step compiled for 8 CPU devices (global batch 8, "
            "one image per device; `training.fsdp=8` is a ('data': 1, 'fsdp': 8) mesh), per "
            "device. Arguments are the state and the batch shard (the new state reuses their "
            "buffers: donated); temporaries are the activations and gradients of the step.",
            "",
            "| network | fsdp | state MiB | arguments MiB | temporaries MiB | total MiB |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for label, name, shape, _ in models:
            for fsdp in (1, 8):
                m = compiled_memory(configs.get_config(name), shape, fsdp, 8)
                lines.append(
                    f"| {label} | {fsdp} | {m['state'] / 2**20:,.1f} | "
                    f"{m['arguments'] / 2**20:,.1f} | {m['temp'] / 2**20:,.1f} | "
                    f"{(m['arguments'] + m['temp']) / 2**20:,.1f} |"
                )
    lines += [
        "",
        "## Assumptions and sources",
        "",
        *[f"- {s.name}: {s.source}." for s in SYSTEMS],
        f"- Achieved share of peak: {MFU:.0%} for the U-Net's convolutions and attention in "
        "bfloat16 (`model.dtype='bfloat16'`); an assumption, not measured. With float32 compute "
        "an H100 runs TF32 at half the bf16 peak, and compute time doubles.",
        "- All-reduce bandwidth: the per-chip one-way bandwidth of the spec, fully used "
        "(bandwidth-optimal ring / torus algorithms; real collectives reach less). A TPU slice "
        "of 8 chips is a small mesh whose links are not all used; the TPU rows assume a torus.",
        f"- Latency: {LATENCY_S * 1e6:.0f} us per all-reduce stage, 2 log2(N) stages (tree-like "
        "schedules); an assumption.",
        "- The gradient is all-reduced in float32 once per step (no gradient compression, no "
        "accumulation over several steps); `training.grad_accum_steps` k divides the "
        "all-reduce's share by k at the same global batch.",
        "- Input pipeline, checkpointing and the EMA/optimizer update are left out (the update is "
        "the 'optimizer + EMA' column, elementwise, under 0.2% of a step's FLOPs).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiled", action="store_true", help="cost analysis after compiling")
    parser.add_argument("--memory", action="store_true", help="XLA memory analysis under FSDP")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "scaling_model.md"))
    args = parser.parse_args()
    report = build_report(args.compiled, args.memory)
    Path(args.out).write_text(report)
    print(report)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
