"""`diffusion-jax fetch-inception [--from FILE] [--out FILE.npz] [--no_hash_check]`: FID's
Inception-v3 weights downloaded (or read from a local copy) and converted for Flax."""

from __future__ import annotations

from diffusion_jax.cli import flags


def main(argv: list[str]) -> int:
    from diffusion_jax.evaluation import inception_weights as weights

    parser = flags.Parser(
        prog="diffusion-jax fetch-inception",
        description="Download pytorch-fid's FID Inception weights (or take a downloaded copy) "
        "and convert them for diffusion_jax. Needs torch to read the .pth file.",
    )
    src_help = f"an already downloaded {weights.WEIGHTS_FILENAME} (default: {weights.WEIGHTS_URL})"
    parser.add_argument("--from", dest="src", default=None, metavar="FILE", help=src_help)
    out_help = f"where to write the .npz (default {weights.default_weights_path()})"
    parser.add_argument("--out", default=None, help=out_help)
    hash_help = f"accept a source whose sha256 does not start with {weights.WEIGHTS_SHA256_PREFIX}"
    parser.add_argument("--no_hash_check", action="store_true", help=hash_help)
    args = parser.parse_args(argv)
    out = weights.fetch_inception(args.src, args.out, check_hash=not args.no_hash_check)
    print(f"Wrote {out}")
    return 0
