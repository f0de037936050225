"""The `diffusion-jax` command line.

    diffusion-jax --help
    diffusion-jax info                      # versions, devices, and the U-Net presets' sizes

Training, sampling and evaluation subcommands arrive with those modules; the entry point stays thin
and calls library functions.
"""

from __future__ import annotations

import argparse
import sys

from diffusion_jax import __version__
from diffusion_jax.models.unet import PRESET_IMAGE_SIZES


def _info(args: argparse.Namespace) -> int:
    import jax

    from diffusion_jax.models import count_params, ddpm_unet

    print(f"diffusion_jax {__version__}, jax {jax.__version__}")
    print(f"devices: {jax.devices()}")
    for name in args.presets:
        size = PRESET_IMAGE_SIZES[name]
        count = count_params(ddpm_unet(name), (size, size, 3))
        print(f"U-Net preset {name}: {size}x{size}x3, {count:,} parameters")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusion-jax",
        description="Denoising diffusion probabilistic models in JAX/Flax.",
    )
    parser.add_argument("--version", action="version", version=f"diffusion_jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print versions, devices and U-Net preset sizes")
    info.add_argument(
        "--presets",
        nargs="*",
        default=["cifar10"],
        choices=sorted(PRESET_IMAGE_SIZES),
        help="U-Net presets whose parameters to count (without compiling)",
    )
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
