"""`diffusion-jax check-data DIR [--image_size N] [--workers N]`: every image of a folder dataset
decoded once, up front (`data.check`); prints the count, the size range, the files that do not
decode and those smaller than --image_size. Exit status 0 when every file decodes."""

from __future__ import annotations

from diffusion_jax.cli import flags


def main(argv: list[str]) -> int:
    parser = flags.Parser(
        prog="diffusion-jax check-data",
        description="Decode every PNG/JPEG file of an image folder (config.data.folder) as "
        "training would, and list the files that do not decode and the images smaller than "
        "--image_size (training upscales them).",
    )
    parser.add_argument("folder", help="the image folder (optionally one sub-folder per class)")
    parser.add_argument(
        "--image_size", type=int, default=0, help="the training size (data.image_size); 0: none"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="decoding threads; 0: min(32, CPUs + 4)"
    )
    args = parser.parse_args(argv)
    if args.image_size < 0 or args.workers < 0:
        parser.error("--image_size and --workers must be >= 0")
    from diffusion_jax.data import check
    from diffusion_jax.data.sources import ImageDecodeError

    report = check.check_folder(args.folder, image_size=args.image_size, workers=args.workers)
    print(check.format_report(report))
    if report.unreadable:
        raise ImageDecodeError(check.unreadable_message(report, limit=0))
    return 0
