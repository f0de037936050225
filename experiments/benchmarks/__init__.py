"""The benchmark suite: speed of the library's train step, forward pass, samplers and FID Inception,
next to the same U-Net in PyTorch. Results and how they were measured: experiments/BENCHMARKS.md.

    python -m experiments.benchmarks.run --model cifar10 --batch 8 --what train,forward,peer
    python -m experiments.benchmarks.fastpaths --model cifar10 --batch 8 --variants bfloat16,scan4
    python -m experiments.benchmarks.scaling --devices 1,2,4,8
    python -m experiments.benchmarks.compile_cache --model cifar10 --batch 8
    python -m experiments.benchmarks.report experiments/results/benchmarks/*.json

Modules: `run` (the command), `ours` (our side), `peer` (PyTorch's side, in its own process),
`measure` (timers, XLA cost and memory analysis, device peaks), `cpuload` (what else ran),
`fastpaths`, `scaling`, `compile_cache`, `report` (JSON to Markdown).
"""
