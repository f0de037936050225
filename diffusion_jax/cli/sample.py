"""`diffusion-jax sample --workdir RUN [--num N --sampler ddim --steps 50 ...] [--out FILE.npz]`:
samples of a run to .npz and a PNG grid (`sampling.runs`, `sampling.generate`). The flags and the
output path are checked before the run is loaded; earlier samples are kept unless --overwrite."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusion_jax.cli import flags


def _parser() -> argparse.ArgumentParser:
    parser = flags.Parser(
        prog="diffusion-jax sample",
        description="Draw samples from a trained run (its EMA parameters unless --no_ema).",
    )
    parser.add_argument("--workdir", required=True, help="the run's directory (with checkpoints/)")
    flags.add_sampling_flags(parser, num=64)
    parser.add_argument("--out", default="", help="output .npz (default WORKDIR/samples.npz)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (and its .png)"
    )
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    flags._add_distributed_flags(parser)
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    flags.check_sampling_flags(args)
    out = Path(args.out or Path(args.workdir) / "samples.npz")
    if out.suffix != ".npz":
        raise flags.UsageError(f"--out must name a .npz file, got {out}.")
    flags.check_output([out, out.with_suffix(".png")], args.overwrite)
    flags.start_distributed(args)

    from diffusion_jax import parallel
    from diffusion_jax.sampling import generate, runs

    run = runs.load_run(args.workdir, step=args.step, use_ema=not args.no_ema)
    run = flags.with_var_type(args, run)
    samples, labels = flags.draw_samples(args, run)
    if parallel.is_main_process():
        generate.save_samples(samples, labels, out, grid=out.with_suffix(".png"))
        print(f"Wrote {out} and {out.with_suffix('.png')}")
    return 0
