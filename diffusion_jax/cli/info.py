"""`diffusion-jax info [--presets NAME ...]`: versions, devices, and U-Net parameter counts
(from shapes, without compiling). Imports no training code."""

from __future__ import annotations

from diffusion_jax import __version__
from diffusion_jax.cli import flags
from diffusion_jax.models.unet import PRESET_IMAGE_SIZES


def main(argv: list[str]) -> int:
    parser = flags.Parser(prog="diffusion-jax info")
    parser.add_argument(
        "--presets",
        nargs="*",
        default=["cifar10"],
        choices=sorted(PRESET_IMAGE_SIZES),
        help="U-Net presets whose parameters to count (without compiling)",
    )
    args = parser.parse_args(argv)
    import jax

    from diffusion_jax.models import count_params, ddpm_unet

    print(f"diffusion_jax {__version__}, jax {jax.__version__}")
    print(f"devices: {jax.devices()}")
    for name in args.presets:
        size = PRESET_IMAGE_SIZES[name]
        count = count_params(ddpm_unet(name), (size, size, 3))
        print(f"U-Net preset {name}: {size}x{size}x3, {count:,} parameters")
    return 0
