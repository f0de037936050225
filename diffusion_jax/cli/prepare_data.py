"""`diffusion-jax prepare-data NAME [--data_dir DIR] [--manual_dir DIR]`: a TFDS dataset
downloaded and prepared once (`data.pipeline.prepare_data`)."""

from __future__ import annotations

from diffusion_jax.cli import flags


def main(argv: list[str]) -> int:
    parser = flags.Parser(prog="diffusion-jax prepare-data")
    parser.add_argument("name", help="TFDS dataset, e.g. cifar10, celeb_a_hq, lsun/church_outdoor")
    parser.add_argument(
        "--data_dir", default="", help="TFDS data_dir (default ~/tensorflow_datasets)"
    )
    parser.add_argument(
        "--manual_dir", default="", help="where manually downloaded files are (celeb_a_hq)"
    )
    args = parser.parse_args(argv)
    from diffusion_jax.data import pipeline as data

    path = data.prepare_data(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir)
    print(f"Prepared {args.name} in {path}")
    return 0
