"""The `diffusion-jax` command line (also `python -m diffusion_jax`).

    diffusion-jax train --config experiments/configs/digits.py --workdir runs/digits \\
        --config.training.batch_size=64           # any config key, as ml_collections overrides
    diffusion-jax prepare-data cifar10 [--data_dir DIR]
    diffusion-jax info --presets cifar10 lsun256

The entry point stays thin: it parses flags and calls `train.train`, `data.prepare_data`, ...
Configs are locked before overrides apply, so a mistyped key fails and names the nearest keys.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from diffusion_jax import __version__
from diffusion_jax.models.unet import PRESET_IMAGE_SIZES

COMMANDS = {
    "train": "train a model from a config file (absl/ml_collections flags)",
    "train-classifier": "train a noise-aware classifier for classifier guidance",
    "sample": "draw samples from a trained run (ancestral or DDIM, guidance) to .npz + PNG",
    "prepare-data": "download and prepare a TFDS dataset in the array_record format",
    "info": "print versions, devices and U-Net preset sizes",
}


class UsageError(SystemExit):
    """A mistake on the command line: the message says what to change."""

    def __init__(self, message: str):
        super().__init__(f"diffusion-jax: error: {message}")


def _load_config_file(path: str):
    spec = importlib.util.spec_from_file_location("_diffusion_jax_config", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load the config file {path!r}.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def parse_train_flags(argv: list[str]):
    """(config, workdir) from `train` arguments; a mistyped key names the nearest keys."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["diffusion-jax train", *argv]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "experiment config file", flag_values=fv, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_string(
        "workdir", None, "directory for checkpoints, logs and samples", flag_values=fv
    )
    try:
        fv(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
        raise UsageError(_explain_flag_error(argv, e)) from None
    if fv.config is None or not fv.workdir:
        raise UsageError(
            "train needs --config FILE and --workdir DIR, e.g. diffusion-jax train "
            "--config experiments/configs/digits.py --workdir runs/digits"
        )
    return fv.config, fv.workdir


def _explain_flag_error(argv: list[str], error: Exception) -> str:
    """The flag parser's complaint, and for a mistyped config key the nearest real keys."""
    from diffusion_jax.config import flatten_keys, nearest_keys

    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv[:-1]:
        path = argv[argv.index("--config") + 1]
    if path is None:
        return str(error)
    config = _load_config_file(path)
    known = set(flatten_keys(config))
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config.") :].split("=", 1)[0]
            if key not in known:
                near = ", ".join(f"config.{k}" for k in nearest_keys(config, key))
                return (
                    f"{path} has no key config.{key} (configs are locked, so a typo cannot add "
                    f"one). Nearest keys: {near or 'none'}."
                )
    return f"bad flag value: {error}"


def _train(argv: list[str]) -> int:
    config, workdir = parse_train_flags(argv)
    from diffusion_jax import train

    train.train(config, workdir)
    return 0


def _sample(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="diffusion-jax sample",
        description="Draw samples from a trained run (its EMA parameters unless --no_ema).",
    )
    parser.add_argument("--workdir", required=True, help="the run's directory (with checkpoints/)")
    parser.add_argument("--num", type=int, default=64, help="how many samples")
    parser.add_argument("--sampler", choices=("ancestral", "ddim"), default="ancestral")
    parser.add_argument("--steps", type=int, default=0, help="respaced steps; 0 = all T steps")
    parser.add_argument("--spacing", choices=("uniform", "ddim", "quad"), default="uniform")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM's eta (0: deterministic)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free weight w")
    parser.add_argument("--classes", default="", help="comma-separated labels to cycle through")
    parser.add_argument("--unconditional", action="store_true", help="null labels only")
    parser.add_argument("--classifier_workdir", default="", help="a train-classifier run")
    parser.add_argument("--classifier_scale", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_ema", action="store_true", help="use the raw parameters")
    parser.add_argument("--out", default="", help="output .npz (default WORKDIR/samples.npz)")
    args = parser.parse_args(argv)
    from pathlib import Path

    from diffusion_jax import generate

    run = generate.load_run(args.workdir, use_ema=not args.no_ema)
    cond_fn = None
    if args.classifier_workdir:
        from diffusion_jax import classifier_train
        from diffusion_jax.models.classifier import (
            make_classifier_apply_fn,
            make_classifier_cond_fn,
        )

        module, params = classifier_train.load_classifier(
            args.classifier_workdir, diffusion_config=run.config.diffusion
        )
        # The sampler multiplies by classifier_scale; the cond_fn itself stays unscaled.
        cond_fn = make_classifier_cond_fn(make_classifier_apply_fn(module), params)
    classes = [int(c) for c in args.classes.split(",") if c.strip()]
    print(
        f"Sampling {args.num} from {args.workdir} at step {run.step} with the "
        f"{'EMA' if run.ema else 'raw (non-EMA)'} parameters ({args.sampler}, "
        f"{args.steps or run.config.diffusion.num_timesteps} steps)."
    )
    samples, labels = generate.generate(
        run,
        num=args.num,
        sampler=args.sampler,
        steps=args.steps,
        spacing=args.spacing,
        eta=args.eta,
        cfg_scale=args.guidance,
        classes=classes or None,
        unconditional=args.unconditional,
        cond_fn=cond_fn,
        classifier_scale=args.classifier_scale,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    out = Path(args.out or Path(args.workdir) / "samples.npz")
    generate.save_samples(samples, labels, out, grid=out.with_suffix(".png"))
    print(f"Wrote {out} and {out.with_suffix('.png')}")
    return 0


def _train_classifier(argv: list[str]) -> int:
    config, workdir = parse_train_flags(argv)
    from diffusion_jax import classifier_train

    classifier_train.train_classifier(config, workdir)
    return 0


def _prepare_data(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffusion-jax prepare-data")
    parser.add_argument("name", help="TFDS dataset, e.g. cifar10, celeb_a_hq, lsun/church_outdoor")
    parser.add_argument(
        "--data_dir", default="", help="TFDS data_dir (default ~/tensorflow_datasets)"
    )
    parser.add_argument(
        "--manual_dir", default="", help="where manually downloaded files are (celeb_a_hq)"
    )
    args = parser.parse_args(argv)
    from diffusion_jax import data

    path = data.prepare_data(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir)
    print(f"Prepared {args.name} in {path}")
    return 0


def _info(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffusion-jax info")
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


def _usage() -> str:
    lines = ["usage: diffusion-jax [--version] COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<18}{text}" for name, text in COMMANDS.items()]
    lines += ["", "Run `diffusion-jax COMMAND --help` for a command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"diffusion_jax {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    handlers = {
        "sample": _sample,
        "train": _train,
        "train-classifier": _train_classifier,
        "prepare-data": _prepare_data,
        "info": _info,
    }
    if command not in handlers:
        raise UsageError(f"unknown command {command!r}.\n{_usage()}")
    from diffusion_jax.checkpoint import CheckpointError
    from diffusion_jax.data_sources import (
        DataPreparationError,
        DatasetNotFoundError,
        ImageDecodeError,
    )
    from diffusion_jax.loop import NonFiniteError

    try:
        return handlers[command](rest)
    except (
        CheckpointError,
        DatasetNotFoundError,
        DataPreparationError,
        ImageDecodeError,
        NonFiniteError,
    ) as e:
        # Errors that explain themselves: their message, without a traceback.
        print(f"diffusion-jax {command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
