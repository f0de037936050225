"""`diffusion-jax ref-stats (--dataset NAME | --folder DIR | --config NAME_OR_FILE) --out FILE`:
reference feature statistics for `evaluate --reference` (`evaluation.evaluate`)."""

from __future__ import annotations

import argparse

from diffusion_jax.cli import flags
from diffusion_jax.cli.flags import UsageError


def _parser() -> argparse.ArgumentParser:
    parser = flags.Parser(
        prog="diffusion-jax ref-stats",
        description="Reference feature statistics (mean, covariance and, unless --stats_only, the "
        "features for KID and precision/recall) of a dataset split or an image folder.",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a dataset name (cifar10, digits, lsun/church_outdoor...)")
    src.add_argument("--folder", help="a folder of PNG/JPEG images")
    src.add_argument(
        "--config", help="a config preset (e.g. cifar10) or config file: its data section"
    )
    parser.add_argument("--split", default="", help="dataset split (default: the held-out one)")
    parser.add_argument("--data_dir", default="", help="TFDS data_dir")
    parser.add_argument("--image_size", type=int, default=0, help="resize and crop to this size")
    parser.add_argument("--max_images", type=int, default=0, help="at most this many (0: all)")
    parser.add_argument("--stats_only", action="store_true", help="do not keep the features")
    parser.add_argument("--out", required=True, help="output .npz")
    flags.add_feature_flags(parser)
    return parser


def _data_config(args: argparse.Namespace):
    """The data section the flags describe."""
    from diffusion_jax import configs

    if args.config:
        try:
            data_config = configs.get_config(args.config).data
        except ValueError as e:
            raise UsageError(str(e)) from None
    else:
        data_config = configs.base_config().data
        data_config.dataset = "folder" if args.folder else args.dataset
        data_config.folder = args.folder or ""
    if args.data_dir:
        data_config.data_dir = args.data_dir
    if args.image_size:
        data_config.image_size = args.image_size
    data_config.use_labels = False
    return data_config


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    data_config = _data_config(args)
    from diffusion_jax.evaluation import evaluate

    ref = evaluate.reference_statistics(
        flags.extractor(args),
        data_config=data_config,
        split=args.split or None,
        max_images=args.max_images,
        keep_features=not args.stats_only,
    )
    path = evaluate.save_reference(args.out, ref)
    print(f"Wrote {path}: {ref.num_images} images of {ref.source}, {ref.extractor} features.")
    return 0
