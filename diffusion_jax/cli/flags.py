"""What several subcommands share: their flags, and the helpers that read them.

    args, rest = flags.distributed_flags(argv)       # the multi-process flags, the others
    flags.start_distributed(args)                    # before anything else touches JAX
    config, workdir = flags.parse_train_flags(argv)  # train / train-classifier: --config ...

Config flags are absl/ml_collections ones: `--config digits` or a file, then `--config.KEY=VALUE`
overrides on a locked config, so a mistyped key fails and names the nearest keys. Heavy imports
stay inside the functions, so importing this module costs no JAX.
"""

from __future__ import annotations

import argparse

from diffusion_jax.errors import UserError


class UsageError(UserError):
    """A mistake on the command line: the message says what to change."""


class Parser(argparse.ArgumentParser):
    """An argparse parser whose mistakes are UsageErrors (one line from the error boundary, exit
    status 2) instead of argparse's usage block and SystemExit; --help is argparse's own."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(
            f"{message} (diffusion-jax {self.prog.split()[-1]} --help lists the flags)"
        )


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-process runs (train, train-classifier, sample, evaluate)",
        "Run the same command in every process. JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / "
        "JAX_PROCESS_ID, SLURM and multi-host TPU slices are detected without these flags.",
    )
    group.add_argument("--coordinator_address", default="", help="HOST:PORT of process 0")
    group.add_argument("--num_processes", type=int, default=None, help="how many processes")
    group.add_argument("--process_id", type=int, default=None, help="this process, 0..N-1")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="start jax.distributed with JAX's own cluster detection (e.g. on a TPU pod)",
    )
    group.add_argument(
        "--init_timeout", type=int, default=300, help="seconds to wait for every process to join"
    )
    group.add_argument(
        "--heartbeat_timeout",
        type=int,
        default=100,
        help="seconds of silence after which a process counts as dead and the others stop",
    )


def _add_resume_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow_config_change",
        action="store_true",
        help="resume although the data, batch or seed keys differ from the run's (every change "
        "is appended to WORKDIR/config_history.jsonl); keys that change the model are never "
        "allowed",
    )


def distributed_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the multi-process flags and train's own --allow_config_change, the other arguments) of a
    command line."""
    parser = Parser(add_help=False)
    _add_distributed_flags(parser)
    _add_resume_flags(parser)
    return parser.parse_known_args(argv)


def start_distributed(args: argparse.Namespace) -> bool:
    """`jax.distributed.initialize` as the multi-process flags (or the environment) ask; call it
    before anything else touches JAX. Returns whether the run is multi-process."""
    from diffusion_jax import parallel

    try:
        return parallel.maybe_initialize_distributed(
            args.coordinator_address or None,
            args.num_processes,
            args.process_id,
            force=args.distributed,
            initialization_timeout=args.init_timeout,
            heartbeat_timeout=args.heartbeat_timeout,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def wants_help(argv: list[str]) -> bool:
    """Whether a train-style command line asks for its help (before any `--`)."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    return any(a in ("-h", "--help") for a in head)


def train_help(command: str = "train", description: str = "", argv: list[str] = ()) -> str:
    """The help text of `diffusion-jax train` / `train-classifier`: its flags and every config
    key with its value (of --config's preset when `argv` names one, else of the base config).
    (absl parses these flags; this argparse parser only formats the help.)"""
    from diffusion_jax import configs

    example = "digits_classifier" if "classifier" in command else "digits"
    found = _config_arg(list(argv))
    name = found[1].split(":", 1)[0] if found else example
    try:
        config = configs.get_config(name)
    except ValueError:
        name, config = example, configs.get_config(example)
    keys = "\n".join(f"  --config.{k}={_flag_value(v)}" for k, v in _leaves(config))
    parser = argparse.ArgumentParser(
        prog=f"diffusion-jax {command}",
        usage=f"diffusion-jax {command} --config NAME_OR_FILE --workdir DIR "
        "[--config.KEY=VALUE ...] [--allow_config_change] [--debug] [multi-process flags]",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"config keys (--config.KEY=VALUE; the values of {name}):\n{keys}\n\n"
        "Configs are locked first, so a mistyped key fails and names the nearest keys; every "
        "value is checked before anything is compiled or written. Example: diffusion-jax "
        f"{command} --config {example} --workdir runs/{example}",
    )
    parser.add_argument(
        "--config",
        metavar="NAME_OR_FILE",
        help=f"a preset ({', '.join(configs.PRESETS)}) or a .py file with get_config(); "
        "FILE:ARG passes ARG to get_config",
    )
    parser.add_argument("--workdir", help="directory for checkpoints, logs and samples")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    _add_resume_flags(parser)
    _add_distributed_flags(parser)
    return parser.format_help()


def _leaves(config, prefix: str = ""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _flag_value(value) -> str:
    if isinstance(value, tuple | list):
        return "'(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")'"
    return repr(value) if isinstance(value, str) else str(value)


def _config_arg(argv: list[str]) -> tuple[int, str] | None:
    """(index, value) of the --config value in `argv`, or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return i, arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return i + 1, argv[i + 1]
    return None


def _resolve_config_arg(argv: list[str]) -> list[str]:
    """`argv` with --config's preset name (or file) made the path of its .py file; a UsageError
    naming the presets when it is neither."""
    from diffusion_jax import configs

    found = _config_arg(argv)
    if found is None:
        return argv
    i, value = found
    name, colon, rest = value.partition(":")
    try:
        path = str(configs.config_file(name))
    except ValueError as e:
        raise UsageError(str(e)) from None
    argv = list(argv)
    resolved = path + colon + rest
    argv[i] = f"--config={resolved}" if argv[i].startswith("--config=") else resolved
    return argv


def parse_train_flags(argv: list[str], *, command: str = "train"):
    """(config, workdir) from `train` arguments; a mistyped key names the nearest keys. The
    multi-process flags (`distributed_flags`) may be among them and are skipped. `--config`
    takes a preset name (configs.PRESETS) or a config file."""
    from absl import flags
    from ml_collections import config_flags

    _, given = distributed_flags(argv)
    argv = [f"diffusion-jax {command}", *_resolve_config_arg(given)]
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
        raise UsageError(_explain_flag_error(given, e)) from None
    if fv.config is None or not fv.workdir:
        example = "digits_classifier" if "classifier" in command else "digits"
        raise UsageError(
            f"{command} needs --config FILE and --workdir DIR (FILE: a preset name or a config "
            f"file), e.g. diffusion-jax {command} --config {example} --workdir runs/{example}"
        )
    return fv.config, fv.workdir


def _explain_flag_error(argv: list[str], error: Exception) -> str:
    """The flag parser's complaint, and for a mistyped config key the nearest real keys."""
    from diffusion_jax import configs

    found = _config_arg(argv)
    if found is None:
        return str(error)
    path = found[1]
    config = configs.get_config(path.split(":", 1)[0])
    known = set(configs.flatten_keys(config))
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config.") :].split("=", 1)[0]
            if key not in known:
                near = ", ".join(f"config.{k}" for k in configs.nearest_keys(config, key))
                return (
                    f"{path} has no key config.{key} (configs are locked, so a typo cannot add "
                    f"one). Nearest keys: {near or 'none'}."
                )
    return f"bad flag value: {error}"


def add_sampling_flags(parser: argparse.ArgumentParser, num: int) -> None:
    parser.add_argument("--num", type=int, default=num, help="how many samples")
    solvers = "dpmpp_2m, dpmpp_3m, dpmpp_2s, unipc_2, unipc_3, euler, heun"
    parser.add_argument("--sampler", default="ancestral", help=f"ancestral, ddim, {solvers}",
                        choices=("ancestral", "ddim", *solvers.split(", ")))  # fmt: skip
    parser.add_argument("--steps", type=int, default=0, help="respaced or solver steps; 0 = all T")
    spacings = "ancestral/ddim: uniform, ddim, quad; solvers: linspace, leading, trailing, "
    spacings += "quadratic, logsnr, karras (default: the first)"
    parser.add_argument("--spacing", default=None, help=spacings)
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM's eta (0: deterministic)")
    parser.add_argument(
        "--var_type",
        choices=("fixed_small", "fixed_large"),
        default=None,
        help="the reverse process's fixed variance, in place of the run's (DDPM sampled "
        "CIFAR-10 with fixed_large, its 256x256 models with fixed_small)",
    )
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free weight w")
    parser.add_argument("--classes", default="", help="comma-separated labels to cycle through")
    parser.add_argument("--unconditional", action="store_true", help="null labels only")
    parser.add_argument("--classifier_workdir", default="", help="a train-classifier run")
    parser.add_argument("--classifier_scale", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_ema", action="store_true", help="use the raw parameters")


def check_sampling_flags(args: argparse.Namespace) -> None:
    """A UsageError for sampling flags out of range, before anything is loaded or drawn."""
    wrong = [
        f"--{name} must be {rule}, got {getattr(args, name)}"
        for name, rule, ok in (
            ("num", "an integer >= 1", args.num >= 1),
            ("batch_size", "an integer >= 1", args.batch_size >= 1),
            ("steps", "an integer >= 0 (0: all T steps)", args.steps >= 0),
            ("eta", ">= 0", args.eta >= 0),
            ("step", "a saved step >= 0", getattr(args, "step", None) is None or args.step >= 0),
        )
        if not ok
    ]
    try:
        [int(c) for c in args.classes.split(",") if c.strip()]
    except ValueError:
        wrong.append(f"--classes must be comma-separated integers, got {args.classes!r}")
    from diffusion_jax.sampling import generate

    if args.spacing is None:
        args.spacing = "linspace" if args.sampler in generate.FAST_SAMPLERS else "uniform"
    try:
        generate.check_sampler(args.sampler, args.steps, args.spacing)
    except ValueError as e:
        wrong.append(str(e).rstrip("."))
    if wrong:
        raise UsageError("; ".join(wrong) + ".")


def check_output(paths: list, overwrite: bool) -> None:
    """A UsageError, before any work, when an output exists (unless `overwrite`) or cannot be
    written: its folder is created and a scratch file written and removed there."""
    import tempfile
    from pathlib import Path

    for path in map(Path, paths):
        if path.is_dir() or (path.exists() and not overwrite):
            raise UsageError(
                f"{path} is a directory: choose another --out."
                if path.is_dir()
                else f"{path} is already there: choose another --out, or pass --overwrite."
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path.parent):
                pass
        except OSError as e:
            raise UsageError(f"cannot write {path}: {e.strerror or e}.") from None


def with_var_type(args: argparse.Namespace, run):
    """`run` with the fixed variance of --var_type, when given."""
    from diffusion_jax.sampling import runs

    if not args.var_type:
        return run
    try:
        return runs.with_var_type(run, args.var_type)
    except ValueError as e:
        raise UsageError(str(e)) from None


def draw_samples(args: argparse.Namespace, run):
    """Samples of `run` as the sampling flags ask: (uint8 images, labels)."""
    import jax

    from diffusion_jax.sampling import generate, runs

    cond_fn = None
    if args.classifier_workdir:
        from diffusion_jax.models.classifier import (
            make_classifier_apply_fn,
            make_classifier_cond_fn,
        )

        module, params = runs.load_classifier(
            args.classifier_workdir, diffusion_config=run.config.diffusion
        )
        # The sampler multiplies by classifier_scale; the cond_fn itself stays unscaled.
        cond_fn = make_classifier_cond_fn(make_classifier_apply_fn(module), params)
    classes = [int(c) for c in args.classes.split(",") if c.strip()]
    if jax.process_index() == 0:
        print(
            f"Sampling {args.num} from {args.workdir} at step {run.step} with the "
            f"{'EMA' if run.ema else 'raw (non-EMA)'} parameters ({args.sampler}, "
            f"{args.steps or run.config.diffusion.num_timesteps} steps)."
        )
    return generate.generate(
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


def add_feature_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        choices=("inception", "classifier"),
        default="inception",
        help="FID's Inception-v3 (diffusion-jax fetch-inception), or a train-classifier run",
    )
    parser.add_argument("--feature_workdir", default="", help="the classifier run (--features)")
    parser.add_argument("--inception_weights", default="", help="converted Inception .npz")
    parser.add_argument("--feature_batch_size", type=int, default=200)


def extractor(args: argparse.Namespace):
    """The feature extractor the feature flags ask for."""
    from diffusion_jax.evaluation.features import get_extractor

    try:
        return get_extractor(
            args.features,
            workdir=args.feature_workdir or None,
            weights=args.inception_weights or None,
            batch_size=args.feature_batch_size,
            progress=True,
        )
    except ValueError as e:  # a feature flag that does not fit (e.g. no --feature_workdir)
        raise UsageError(str(e)) from None
