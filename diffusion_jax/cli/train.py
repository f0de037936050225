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
        print(flags.train_help(command, DESCRIPTIONS[command]))
        return 0
    flags.start_distributed(flags.distributed_flags(argv)[0])
    config, workdir = flags.parse_train_flags(argv, command=command)
    if command == "train":
        from diffusion_jax.training.train import train

        train(config, workdir)
    else:
        from diffusion_jax.training.classifier import train_classifier

        train_classifier(config, workdir)
    return 0
