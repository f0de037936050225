"""`diffusion-jax train --config NAME_OR_FILE --workdir DIR [--config.KEY=VALUE ...]`: trains a
diffusion model (`training.train.train`), from a preset (`--config digits`) or a config file."""

from __future__ import annotations

from diffusion_jax.cli import flags

DESCRIPTIONS = {
    "train": "Train a diffusion model from a config preset or file.",
    "train-classifier": "Train a noise-aware classifier for classifier guidance.",
}


def main(argv: list[str], command: str = "train") -> int:
    if flags.wants_help(argv):
        print(flags.train_help(command, DESCRIPTIONS[command], argv))
        return 0
    options = flags.distributed_flags(argv)[0]
    flags.start_distributed(options)
    config, workdir = flags.parse_train_flags(argv, command=command)
    if command == "train":
        from diffusion_jax.training.train import train as run
    else:
        from diffusion_jax.training.classifier import train_classifier as run
    run(config, workdir, allow_changes=options.allow_config_change)
    return 0
