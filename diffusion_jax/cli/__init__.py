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
boundary: a user error (errors.UserError, an OSError about a path, a permission or a full disk)
is one line, `diffusion-jax <command>: error: <message>`, exit status 2; `--debug` (anywhere
before `--`) or DIFFUSION_JAX_DEBUG=1 shows its traceback; any other exception is a bug and shows
its traceback. Each command is a thin module (cli/train.py, cli/sample.py, ...) with
`main(argv) -> int` that parses, validates and calls the library, imported only when run, so
`diffusion-jax info` imports no training code. Their shared flags are in cli/flags.py.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys

from diffusion_jax import __version__
from diffusion_jax.cli import flags
from diffusion_jax.errors import UserError, os_error_in

COMMANDS = {
    "train": "train a model from a config preset or file (absl/ml_collections flags)",
    "train-classifier": "train a noise-aware classifier for classifier guidance",
    "sample": "draw samples from a trained run (ancestral or DDIM, guidance) to .npz + PNG",
    "evaluate": "FID / IS / KID / precision-recall of samples, or --bpd over a dataset split",
    "ref-stats": "reference feature statistics of a dataset split or image folder (.npz)",
    "fetch-inception": "download (or --from FILE) and convert FID's Inception-v3 weights",
    "import-weights": "import published DDPM weights (diffusers layout) as a run directory",
    "prepare-data": "download and prepare a TFDS dataset in the array_record format",
    "check-data": "check that every image of a folder dataset decodes, and report small ones",
    "info": "print versions, devices and U-Net preset sizes",
}

DEBUG_ENV = "DIFFUSION_JAX_DEBUG"  # set (to anything but "" or "0") for tracebacks, as --debug

# OSError numbers that are the user's to fix, and what to do about each.
_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space or use another directory",
    errno.EDQUOT: "disk quota exceeded; free some space or use another directory",
    errno.EACCES: "permission denied; check the path's permissions or use another directory",
    errno.EPERM: "operation not permitted; check the path's permissions",
    errno.ENOENT: "no such file or directory; check the path",
    errno.EISDIR: "is a directory; give a file",
    errno.ENOTDIR: "not a directory; check the path",
    errno.EROFS: "read-only file system; use another directory",
    errno.EEXIST: "already exists",
}


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of an error the user can fix (errors.UserError, or an OSError
    about a path, a permission or the disk), else None: a bug, which keeps its traceback."""
    if isinstance(error, UserError):
        return " ".join(str(error).split())
    cause = os_error_in(error)  # a full disk is the user's wherever a library wrapped it
    if cause is not None and (cause is error or cause.errno in (errno.ENOSPC, errno.EDQUOT)):
        error = cause
    if isinstance(error, OSError) and error.errno in _OS_ADVICE:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{_OS_ADVICE[error.errno]} ({error.strerror or error})."
    return None


def _usage() -> str:
    lines = ["usage: diffusion-jax [--version] COMMAND [ARGS] [--debug]", "", "commands:"]
    lines += [f"  {name:<18}{text}" for name, text in COMMANDS.items()]
    lines += ["", "Run `diffusion-jax COMMAND --help` for a command's flags."]
    return "\n".join(lines)


def _debug(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether --debug or DIFFUSION_JAX_DEBUG asks for tracebacks, argv without --debug)."""
    head, sep, tail = argv, [], []
    if "--" in argv:
        i = argv.index("--")
        head, sep, tail = argv[:i], ["--"], argv[i + 1 :]
    flag = "--debug" in head
    env = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return flag or env, [a for a in head if a != "--debug"] + sep + tail


def main(argv: list[str] | None = None) -> int:
    """Runs a command. A user error prints one line on stderr and returns 2; Ctrl-C outside the
    training loop's own handling returns 130; other exceptions (bugs) propagate."""
    debug, argv = _debug(sys.argv[1:] if argv is None else list(argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"diffusion_jax {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if not debug:  # orbax's notes on read-only managers etc. would bury the one error line
        logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        if command not in COMMANDS:
            raise flags.UsageError(
                f"unknown command {command!r}; the commands are {', '.join(COMMANDS)} "
                "(diffusion-jax --help)."
            )
        from diffusion_jax import perf

        perf.use_cpu_xla_flags()  # before the first computation starts XLA's CPU backend
        if os.environ.get(perf.CACHE_ENV):
            perf.enable_compilation_cache()
        return importlib.import_module(f"{__name__}.{command.replace('-', '_')}").main(rest)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"diffusion-jax {command}: interrupted.", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_error_message(e)
        if message is None or debug:
            raise
        print(f"diffusion-jax {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
