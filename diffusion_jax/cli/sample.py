"""`diffusion-jax sample --workdir RUN [--num N --sampler ddim --steps 50 ...] [--out FILE.npz]`:
samples of a run to .npz and a PNG grid (`sampling.runs`, `sampling.generate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusion_jax.cli import flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusion-jax sample",
        description="Draw samples from a trained run (its EMA parameters unless --no_ema).",
    )
    parser.add_argument("--workdir", required=True, help="the run's directory (with checkpoints/)")
    flags.add_sampling_flags(parser, num=64)
    parser.add_argument("--out", default="", help="output .npz (default WORKDIR/samples.npz)")
    flags._add_distributed_flags(parser)
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    flags.start_distributed(args)

    from diffusion_jax import parallel
    from diffusion_jax.sampling import generate, runs

    run = runs.load_run(args.workdir, use_ema=not args.no_ema)
    run = flags.with_var_type(args, run)
    samples, labels = flags.draw_samples(args, run)
    out = Path(args.out or Path(args.workdir) / "samples.npz")
    if parallel.is_main_process():
        generate.save_samples(samples, labels, out, grid=out.with_suffix(".png"))
        print(f"Wrote {out} and {out.with_suffix('.png')}")
    return 0
