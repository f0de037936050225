"""The `diffusion-jax` command line (also `python -m diffusion_jax`).

    diffusion-jax train --config experiments/configs/digits.py --workdir runs/digits \\
        --config.training.batch_size=64           # any config key, as ml_collections overrides
    diffusion-jax prepare-data cifar10 [--data_dir DIR]
    diffusion-jax info --presets cifar10 lsun256

    # one of several processes (every process runs the same command with its own --process_id;
    # on SLURM and TPU pods JAX finds these itself: see experiments/launch/)
    diffusion-jax train ... --coordinator_address 10.0.0.1:1234 --num_processes 2 --process_id 0

The entry point stays thin: it parses flags and calls `train.train`, `data.prepare_data`, ...
Configs are locked before overrides apply, so a mistyped key fails and names the nearest keys.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from diffusion_jax import __version__
from diffusion_jax.models.unet import PRESET_IMAGE_SIZES

COMMANDS = {
    "train": "train a model from a config file (absl/ml_collections flags)",
    "train-classifier": "train a noise-aware classifier for classifier guidance",
    "sample": "draw samples from a trained run (ancestral or DDIM, guidance) to .npz + PNG",
    "evaluate": "FID / IS / KID / precision-recall of samples, or --bpd over a dataset split",
    "ref-stats": "reference feature statistics of a dataset split or image folder (.npz)",
    "fetch-inception": "download (or --from FILE) and convert FID's Inception-v3 weights",
    "import-weights": "import published DDPM weights (diffusers layout) as a run directory",
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


def distributed_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the multi-process flags, the other arguments) of a command line."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_distributed_flags(parser)
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


def parse_train_flags(argv: list[str]):
    """(config, workdir) from `train` arguments; a mistyped key names the nearest keys. The
    multi-process flags (`distributed_flags`) may be among them and are skipped."""
    from absl import flags
    from ml_collections import config_flags

    _, argv = distributed_flags(argv)
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path is not None and not Path(path.split(":", 1)[0]).is_file():
            raise UsageError(
                f"--config {path}: no such file. Experiment configs are in experiments/configs/ "
                "(run from the repository root), e.g. --config experiments/configs/digits.py"
            )
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
    from diffusion_jax.configs.base import flatten_keys, nearest_keys

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
    start_distributed(distributed_flags(argv)[0])
    config, workdir = parse_train_flags(argv)
    from diffusion_jax.training import train

    train.train(config, workdir)
    return 0


def _add_sampling_flags(parser: argparse.ArgumentParser, num: int) -> None:
    parser.add_argument("--num", type=int, default=num, help="how many samples")
    parser.add_argument("--sampler", choices=("ancestral", "ddim"), default="ancestral")
    parser.add_argument("--steps", type=int, default=0, help="respaced steps; 0 = all T steps")
    parser.add_argument("--spacing", choices=("uniform", "ddim", "quad"), default="uniform")
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


def _with_var_type(args: argparse.Namespace, run):
    """`run` with the fixed variance of --var_type, when given."""
    from diffusion_jax.sampling import generate

    if not args.var_type:
        return run
    try:
        return generate.with_var_type(run, args.var_type)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _draw_samples(args: argparse.Namespace, run):
    """Samples of `run` as the sampling flags ask: (uint8 images, labels)."""
    import jax

    from diffusion_jax.sampling import generate

    cond_fn = None
    if args.classifier_workdir:
        from diffusion_jax.models.classifier import (
            make_classifier_apply_fn,
            make_classifier_cond_fn,
        )
        from diffusion_jax.training import classifier as classifier_train

        module, params = classifier_train.load_classifier(
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


def _sample(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="diffusion-jax sample",
        description="Draw samples from a trained run (its EMA parameters unless --no_ema).",
    )
    parser.add_argument("--workdir", required=True, help="the run's directory (with checkpoints/)")
    _add_sampling_flags(parser, num=64)
    parser.add_argument("--out", default="", help="output .npz (default WORKDIR/samples.npz)")
    _add_distributed_flags(parser)
    args = parser.parse_args(argv)
    start_distributed(args)

    from diffusion_jax import parallel
    from diffusion_jax.sampling import generate

    run = generate.load_run(args.workdir, use_ema=not args.no_ema)
    run = _with_var_type(args, run)
    samples, labels = _draw_samples(args, run)
    out = Path(args.out or Path(args.workdir) / "samples.npz")
    if parallel.is_main_process():
        generate.save_samples(samples, labels, out, grid=out.with_suffix(".png"))
        print(f"Wrote {out} and {out.with_suffix('.png')}")
    return 0


def _add_feature_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        choices=("inception", "classifier"),
        default="inception",
        help="FID's Inception-v3 (diffusion-jax fetch-inception), or a train-classifier run",
    )
    parser.add_argument("--feature_workdir", default="", help="the classifier run (--features)")
    parser.add_argument("--inception_weights", default="", help="converted Inception .npz")
    parser.add_argument("--feature_batch_size", type=int, default=200)


def _extractor(args: argparse.Namespace):
    from diffusion_jax.evaluation.features import get_extractor

    return get_extractor(
        args.features,
        workdir=args.feature_workdir or None,
        weights=args.inception_weights or None,
        batch_size=args.feature_batch_size,
        progress=True,
    )


def _ref_stats(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="diffusion-jax ref-stats",
        description="Reference feature statistics (mean, covariance and, unless --stats_only, the "
        "features for KID and precision/recall) of a dataset split or an image folder.",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a dataset name (cifar10, digits, lsun/church_outdoor...)")
    src.add_argument("--folder", help="a folder of PNG/JPEG images")
    src.add_argument("--config", help="an experiment config file: its data section")
    parser.add_argument("--split", default="", help="dataset split (default: the held-out one)")
    parser.add_argument("--data_dir", default="", help="TFDS data_dir")
    parser.add_argument("--image_size", type=int, default=0, help="resize and crop to this size")
    parser.add_argument("--max_images", type=int, default=0, help="at most this many (0: all)")
    parser.add_argument("--stats_only", action="store_true", help="do not keep the features")
    parser.add_argument("--out", required=True, help="output .npz")
    _add_feature_flags(parser)
    args = parser.parse_args(argv)
    from diffusion_jax.configs.base import base_config
    from diffusion_jax.evaluation import evaluate

    if args.config:
        data_config = _load_config_file(args.config).data
    else:
        data_config = base_config().data
        data_config.dataset = "folder" if args.folder else args.dataset
        data_config.folder = args.folder or ""
    if args.data_dir:
        data_config.data_dir = args.data_dir
    if args.image_size:
        data_config.image_size = args.image_size
    data_config.use_labels = False
    ref = evaluate.reference_statistics(
        _extractor(args),
        data_config=data_config,
        split=args.split or None,
        max_images=args.max_images,
        keep_features=not args.stats_only,
    )
    path = evaluate.save_reference(args.out, ref)
    print(f"Wrote {path}: {ref.num_images} images of {ref.source}, {ref.extractor} features.")
    return 0


def _evaluate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="diffusion-jax evaluate",
        description="FID / Inception Score / KID / precision-recall of samples (a file, or drawn "
        "now from --workdir) against reference statistics; --bpd: the variational bound in "
        "bits/dim over a dataset split.",
    )
    parser.add_argument("--workdir", default="", help="the run (to sample from, or for --bpd)")
    parser.add_argument("--samples", default="", help="a samples .npz (arr_0 uint8 NHWC)")
    parser.add_argument("--reference", default="", help="reference statistics .npz (ref-stats)")
    parser.add_argument(
        "--ref_split",
        default="",
        help="or compute the reference from this split of the run's dataset (cached in "
        "WORKDIR/eval/)",
    )
    parser.add_argument("--metrics", default="fid,is,kid,pr", help="any of fid,is,kid,pr")
    parser.add_argument("--bpd", action="store_true", help="the bound in bits/dim over --split")
    parser.add_argument("--split", default="", help="--bpd's split (default: held-out)")
    parser.add_argument("--max_examples", type=int, default=0, help="--bpd on at most this many")
    parser.add_argument("--bpd_batch_size", type=int, default=64)
    parser.add_argument("--out", default="", help="results JSON (default WORKDIR/eval/...)")
    _add_sampling_flags(parser, num=0)
    _add_feature_flags(parser)
    _add_distributed_flags(parser)
    args = parser.parse_args(argv)
    start_distributed(args)
    import json

    from diffusion_jax import parallel
    from diffusion_jax.evaluation import evaluate
    from diffusion_jax.sampling import generate

    main = parallel.is_main_process()

    wants_samples = bool(args.samples or args.num)
    if not (wants_samples or args.bpd):
        raise UsageError(
            "evaluate needs something to evaluate: --samples FILE.npz, --num N (samples drawn "
            "from --workdir), or --bpd."
        )
    if (args.bpd or (args.num and not args.samples) or args.ref_split) and not args.workdir:
        raise UsageError("--bpd, --num and --ref_split need the run's --workdir.")
    run = None
    if args.workdir and (args.bpd or not args.samples or args.ref_split):
        run = generate.load_run(args.workdir, use_ema=not args.no_ema)
        run = _with_var_type(args, run)
    results: dict = {}
    if args.bpd:
        results["bpd"] = evaluate.dataset_bpd(
            run,
            split=args.split or None,
            batch_size=args.bpd_batch_size,
            max_examples=args.max_examples,
            seed=args.seed,
            progress=True,
        )
        if main:
            print(f"bits/dim: {json.dumps(results['bpd'])}")
    if wants_samples:
        metric_names = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
        extractor = _extractor(args)
        reference = None
        if args.reference:
            reference = evaluate.load_reference(args.reference)
        elif args.ref_split:
            tag = extractor.name.replace(":", "_").replace("/", "_")
            cached = Path(args.workdir) / "eval" / f"reference_{tag}_{args.ref_split}.npz"
            if cached.exists():
                reference = evaluate.load_reference(cached)
            else:
                reference = evaluate.reference_statistics(
                    extractor, data_config=run.config.data, split=args.ref_split
                )
                if main:
                    evaluate.save_reference(cached, reference)
        if args.samples:
            samples, labels = evaluate.load_samples(args.samples)
        else:
            samples, labels = _draw_samples(args, run)
        results["samples"] = evaluate.sample_metrics(
            samples,
            extractor,
            reference,
            metrics_to_compute=metric_names,
            labels=labels,
            seed=args.seed,
        )
        results["samples"].update(
            features=extractor.name, reference=reference.source if reference else ""
        )
        if main:
            print(f"sample metrics: {json.dumps(results['samples'])}")
    out = Path(args.out) if args.out else None
    if out is None and args.workdir:
        out = Path(args.workdir) / "eval" / "evaluate.json"
    if out is not None and main:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"Wrote {out}")
    return 0


def _train_classifier(argv: list[str]) -> int:
    start_distributed(distributed_flags(argv)[0])
    config, workdir = parse_train_flags(argv)
    from diffusion_jax.training import classifier as classifier_train

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
    from diffusion_jax.data import pipeline as data

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


def _fetch_inception(argv: list[str]) -> int:
    from diffusion_jax.evaluation import inception

    return inception.fetch_inception_main(argv)


def _import_weights(argv: list[str]) -> int:
    from diffusion_jax.pretrained import diffusers as pretrained

    return pretrained.import_weights_main(argv)


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
        "evaluate": _evaluate,
        "ref-stats": _ref_stats,
        "fetch-inception": _fetch_inception,
        "import-weights": _import_weights,
        "prepare-data": _prepare_data,
        "info": _info,
    }
    if command not in handlers:
        raise UsageError(f"unknown command {command!r}.\n{_usage()}")
    from diffusion_jax import perf

    perf.use_cpu_xla_flags()  # before the first computation starts XLA's CPU backend
    if os.environ.get(perf.CACHE_ENV):
        perf.enable_compilation_cache()
    from diffusion_jax.checkpoint import CheckpointError
    from diffusion_jax.data.sources import (
        DataPreparationError,
        DatasetNotFoundError,
        ImageDecodeError,
    )
    from diffusion_jax.evaluation.inception import (
        InceptionWeightsError,
        InceptionWeightsNotFoundError,
    )
    from diffusion_jax.training.loop import NonFiniteError

    try:
        return handlers[command](rest)
    except (
        CheckpointError,
        DatasetNotFoundError,
        DataPreparationError,
        ImageDecodeError,
        InceptionWeightsError,
        InceptionWeightsNotFoundError,
        NonFiniteError,
    ) as e:
        # Errors that explain themselves: their message, without a traceback.
        print(f"diffusion-jax {command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
