"""The `diffusion-jax` command line (also `python -m diffusion_jax`).

    diffusion-jax train --config digits --workdir runs/digits \\
        --config.training.batch_size=64           # any config key, as ml_collections overrides
    diffusion-jax prepare-data cifar10 [--data_dir DIR]
    diffusion-jax info --presets cifar10 lsun256

    # one of several processes (every process runs the same command with its own --process_id;
    # on SLURM and TPU pods JAX finds these itself: see experiments/launch/)
    diffusion-jax train ... --coordinator_address 10.0.0.1:1234 --num_processes 2 --process_id 0

The CLI is the top layer: it may import everything, and nothing in the package imports it. This
module holds the table of commands, the usage text, the XLA/compile-cache set-up and the error
boundary; each command is a thin module (cli/train.py, cli/sample.py, ...) with
`main(argv) -> int` that parses, validates and calls the library, imported only when run, so
`diffusion-jax info` imports no training code. Their shared flags are in cli/flags.py.
"""

from __future__ import annotations

import importlib
import os
import sys

from diffusion_jax import __version__
from diffusion_jax.cli import flags

COMMANDS = {
    "train": "train a model from a config preset or file (absl/ml_collections flags)",
    "train-classifier": "train a noise-aware classifier for classifier guidance",
    "sample": "draw samples from a trained run (ancestral or DDIM, guidance) to .npz + PNG",
    "evaluate": "FID / IS / KID / precision-recall of samples, or --bpd over a dataset split",
    "ref-stats": "reference feature statistics of a dataset split or image folder (.npz)",
    "fetch-inception": "download (or --from FILE) and convert FID's Inception-v3 weights",
    "import-weights": "import published DDPM weights (diffusers layout) as a run directory",
    "prepare-data": "download and prepare a TFDS dataset in the array_record format",
    "info": "print versions, devices and U-Net preset sizes",
}

# Errors that explain themselves, by the module that defines them: printed as one line, without
# a traceback. A module that was never imported cannot have raised its error, so the boundary
# looks them up in sys.modules instead of importing (and so `info` imports no training code).
_SELF_EXPLAINING = {
    "diffusion_jax.checkpoint": ("CheckpointError",),
    "diffusion_jax.data.sources": ("DatasetNotFoundError", "DataPreparationError",
                                   "ImageDecodeError"),
    "diffusion_jax.evaluation.inception_weights": ("InceptionWeightsError",
                                                   "InceptionWeightsNotFoundError"),
    "diffusion_jax.training.loop": ("NonFiniteError",),
}  # fmt: skip


def _explains_itself(error: BaseException) -> bool:
    for module_name, names in _SELF_EXPLAINING.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        types = tuple(getattr(module, name) for name in names if hasattr(module, name))
        if types and isinstance(error, types):
            return True
    return False


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
    if command not in COMMANDS:
        raise flags.UsageError(f"unknown command {command!r}.\n{_usage()}")
    from diffusion_jax import perf

    perf.use_cpu_xla_flags()  # before the first computation starts XLA's CPU backend
    if os.environ.get(perf.CACHE_ENV):
        perf.enable_compilation_cache()
    try:
        return importlib.import_module(f"{__name__}.{command.replace('-', '_')}").main(rest)
    except Exception as e:
        if not _explains_itself(e):
            raise
        print(f"diffusion-jax {command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
