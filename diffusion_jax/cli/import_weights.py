"""`diffusion-jax import-weights --from DIR --out RUN [--config NAME_OR_FILE]`: a published DDPM
checkpoint as a run directory (`pretrained.importer.import_weights`), and what was imported."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion_jax.cli import flags


def _parser() -> argparse.ArgumentParser:
    parser = flags.Parser(
        prog="diffusion-jax import-weights",
        description="Import a published DDPM checkpoint (diffusers UNet2DModel folder: "
        "config.json + diffusion_pytorch_model.safetensors or .bin) as a run directory that "
        "`diffusion-jax sample --workdir OUT` reads.",
    )
    parser.add_argument(
        "--from", dest="src", required=True, help="the model folder, its unet/, or a weights file"
    )
    parser.add_argument("--out", required=True, help="the run directory to create (must not exist)")
    parser.add_argument(
        "--config",
        default=None,
        help="training config: a preset name (cifar10, celebahq256, lsun_church, lsun_bedroom, "
        "lsun_cat) or a .py file; default from the folder name and image size",
    )
    return parser


def _print_summary(out: Path, info: dict) -> None:
    """What `import_weights` wrote, from its provenance record."""
    unet, (h, w, c) = info["unet"], info["image_shape"]
    attn = ", ".join(f"{r}x{r}" for r in unet["attn_resolutions"]) or "none"
    print(f"Imported {info['source']} into {out}")
    print(
        f"  {info['num_params']:,} parameters: DDPM U-Net ch={unet['ch']}, "
        f"ch_mult={tuple(unet['ch_mult'])}, {unet['num_res_blocks']} blocks per level, "
        f"attention at {attn}, images {h}x{w}x{c}"
    )
    print(f"  training config: {info['training_config']}")
    for change in info["changes"]:
        print(f"    {change}")
    if info["scheduler_config"] is None:
        print("  no scheduler_config.json found: the config's diffusion settings are kept")
    print("  params = ema_params = the imported (EMA) weights, at step 0")
    print(f"Sample with: diffusion-jax sample --workdir {out} --sampler ddim --steps 50")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from diffusion_jax.pretrained import importer

    out = Path(importer.import_weights(args.src, args.out, config_name=args.config))
    _print_summary(out, json.loads((out / importer.PROVENANCE_FILE).read_text()))
    return 0
