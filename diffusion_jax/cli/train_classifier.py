"""`diffusion-jax train-classifier --config NAME_OR_FILE --workdir DIR [...]`: trains the
noise-aware classifier of classifier guidance (`training.classifier.train_classifier`), with
the flags of `train` (e.g. `--config digits_classifier`)."""

from diffusion_jax.cli import train


def main(argv: list[str]) -> int:
    return train.main(argv, command="train-classifier")
