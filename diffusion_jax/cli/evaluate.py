"""`diffusion-jax evaluate [--samples FILE | --workdir RUN --num N] [--reference FILE] [--bpd]`:
sample metrics and bits/dim, printed and written as JSON (`evaluation.evaluate`, `.bpd`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion_jax.cli import flags
from diffusion_jax.cli.flags import UsageError


def _parser() -> argparse.ArgumentParser:
    parser = flags.Parser(
        prog="diffusion-jax evaluate",
        description="FID / Inception Score / KID / precision-recall of samples (a file, or drawn "
        "now from --workdir) against reference statistics; --bpd: the variational bound in "
        "bits/dim over a dataset split.",
    )
    parser.add_argument("--workdir", default="", help="the run (to sample from, or for --bpd)")
    parser.add_argument("--samples", default="", help="a samples .npz (arr_0 uint8 NHWC)")
    parser.add_argument("--reference", default="", help="reference statistics .npz (ref-stats)")
    parser.add_argument(
        "--ref_split",
        default="",
        help="or compute the reference from this split of the run's dataset (cached in "
        "WORKDIR/eval/)",
    )
    parser.add_argument("--metrics", default="fid,is,kid,pr", help="any of fid,is,kid,pr")
    parser.add_argument("--bpd", action="store_true", help="the bound in bits/dim over --split")
    parser.add_argument("--split", default="", help="--bpd's split (default: held-out)")
    parser.add_argument("--max_examples", type=int, default=0, help="--bpd on at most this many")
    parser.add_argument("--bpd_batch_size", type=int, default=64)
    parser.add_argument("--out", default="", help="results JSON (default WORKDIR/eval/...)")
    flags.add_sampling_flags(parser, num=0)
    flags.add_feature_flags(parser)
    flags._add_distributed_flags(parser)
    return parser


def _check(args: argparse.Namespace) -> None:
    """A UsageError when the flags ask for nothing, or for a run without --workdir."""
    if not (args.samples or args.num or args.bpd):
        raise UsageError(
            "evaluate needs something to evaluate: --samples FILE.npz, --num N (samples drawn "
            "from --workdir), or --bpd."
        )
    if (args.bpd or (args.num and not args.samples) or args.ref_split) and not args.workdir:
        raise UsageError("--bpd, --num and --ref_split need the run's --workdir.")
    if args.num or args.num < 0:
        flags.check_sampling_flags(args)


def _sample_metrics(args: argparse.Namespace, run, is_main: bool) -> dict:
    """The sample metrics of --samples, or of samples drawn now from the run."""
    from diffusion_jax.evaluation import evaluate

    metric_names = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    extractor = flags.extractor(args)
    reference = None  # --reference's file, or --ref_split's statistics (cached in the run)
    if args.reference:
        reference = evaluate.load_reference(args.reference)
    elif args.ref_split:
        reference = evaluate.cached_reference(
            extractor, run.config.data, args.workdir, args.ref_split
        )
    if args.samples:
        samples, labels = evaluate.load_samples(args.samples)
    else:
        samples, labels = flags.draw_samples(args, run)
    results = evaluate.sample_metrics(
        samples,
        extractor,
        reference,
        metrics_to_compute=metric_names,
        labels=labels,
        seed=args.seed,
    )
    results.update(features=extractor.name, reference=reference.source if reference else "")
    if is_main:
        print(f"sample metrics: {json.dumps(results)}")
    return results


def _bpd(args: argparse.Namespace, run, is_main: bool) -> dict:
    """The bound in bits/dim over --split."""
    from diffusion_jax.evaluation import bpd

    result = bpd.dataset_bpd(
        run,
        split=args.split or None,
        batch_size=args.bpd_batch_size,
        max_examples=args.max_examples,
        seed=args.seed,
        progress=True,
    )
    if is_main:
        print(f"bits/dim: {json.dumps(result)}")
    return result


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _check(args)
    flags.start_distributed(args)
    from diffusion_jax import parallel
    from diffusion_jax.sampling import runs

    is_main = parallel.is_main_process()
    run = None
    if args.workdir and (args.bpd or not args.samples or args.ref_split):
        run = runs.load_run(args.workdir, use_ema=not args.no_ema)
        run = flags.with_var_type(args, run)
    results: dict = {}
    if args.bpd:
        results["bpd"] = _bpd(args, run, is_main)
    if args.samples or args.num:
        results["samples"] = _sample_metrics(args, run, is_main)
    out = Path(args.out) if args.out else None
    if out is None and args.workdir:
        out = Path(args.workdir) / "eval" / "evaluate.json"
    if out is not None and is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"Wrote {out}")
    return 0
