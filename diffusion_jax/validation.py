"""Every key of a training config checked before anything is compiled or written.

    from diffusion_jax import validation
    validation.validate(config)                      # train: raises errors.ConfigError
    validation.validate(config, kind="classifier")   # train-classifier (config.classifier)
    validation.check(config)                         # the problems, one line each; [] if none

A problem names the key, its value and what is allowed ("training.log_every must be an integer
>= 1, got 0"); `validate` raises one ConfigError of all of them: "config: " and the problems
joined by "; ". Each key has a rule (`RULES`); the rules between keys are those the code enforces
later (where: the comment above each), checked behind their switch (eval.* once eval_every > 0).
The data's shape is `pipeline.example_shape`'s; folders, devices and hosts are checked in use.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from diffusion_jax.core import diffusion, losses, schedules
from diffusion_jax.data import pipeline
from diffusion_jax.errors import ConfigError
from diffusion_jax.models.layers import GROUPNORM_GROUPS

KINDS = ("diffusion", "classifier")
# Names kept as literals in models/factory.py, setup.py, training/, sampling/generate.py and
# evaluation/features.py (tests/test_validation.py checks that the code takes each).
MODEL_NAMES = ("unet", "mlp")
DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "linear")
TIMESTEP_SAMPLERS = ("uniform", "importance")
ON_NONFINITE = ("error", "skip")
SAMPLERS = ("ancestral", "ddim")
FEATURES = ("inception", "classifier")


def _show(value: Any, right_type: bool = True) -> str:
    text = repr(value).replace("\n", " ")
    text = text if len(text) <= 60 else text[:57] + "..."
    return text if right_type else f"{text} ({type(value).__name__})"


def _near(word: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word.lower(), list(candidates), n=1)  # names: lower case
    return found[0] if found else None


def _is(kind: type, value: Any) -> bool:
    """isinstance, where a bool is no number."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


_is_int = functools.partial(_is, numbers.Integral)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one key allows: `allowed` in words, tested by `of_type`, then `in_range`; with
    `names`, one of them (a near miss is named)."""

    allowed: str
    of_type: Callable[[Any], bool]
    in_range: Callable[[Any], bool] = lambda value: True
    names: tuple[str, ...] = ()

    def __call__(self, key: str, value: Any) -> str | None:
        if not self.of_type(value):
            return f"{key} must be {self.allowed}, got {_show(value, False)}"
        if self.in_range(value):
            return None
        if self.names:
            near = _near(value, self.names)
            hint = f"; did you mean {near!r}?" if near else ""
            return f"{key}: unknown value {value!r}{hint} (choose one of {', '.join(self.names)})"
        return f"{key} must be {self.allowed}, got {_show(value)}"


def integer(lo: int = 0, hi: int | None = None) -> Rule:
    """An int (not a bool) in lo..hi (hi None: no upper bound)."""
    allowed = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
    return Rule(allowed, _is_int, lambda v: lo <= v and (hi is None or v <= hi))


def number(interval: str) -> Rule:
    """A finite int or float (not a bool) in `interval`, written "[0, 1)", "(0, inf)", ..."""
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    with_lo, with_hi = interval[0] == "[", interval[-1] == "]"
    bound = f"{'>=' if with_lo else '>'} {lo:g}"
    allowed = f"a number {bound}" if hi == math.inf else f"a number in {interval}"

    def in_range(v) -> bool:
        above, below = lo < v or (with_lo and v == lo), v < hi or (with_hi and v == hi)
        return math.isfinite(v) and above and below

    return Rule(allowed, functools.partial(_is, numbers.Real), in_range)


BOOL = Rule("True or False", functools.partial(_is, bool))
TEXT = Rule("a string", functools.partial(_is, str))


def sizes(allow_empty: bool = False) -> Rule:
    """A tuple (or a list, as JSON keeps it) of ints >= 1; non-empty unless `allow_empty`."""
    allowed = "a tuple of integers >= 1" if allow_empty else "a non-empty tuple of integers >= 1"
    return Rule(
        allowed,
        functools.partial(_is, tuple | list),
        lambda v: (allow_empty or len(v) > 0) and all(_is_int(x) and x >= 1 for x in v),
    )


def choice(names: Sequence[str]) -> Rule:
    names = tuple(names)
    return Rule(f"one of {', '.join(names)}", TEXT.of_type, names.__contains__, names)


_ENCODER = dict(
    ch=integer(1), ch_mult=sizes(), num_res_blocks=integer(0),
    attn_resolutions=sizes(allow_empty=True), dropout=number("[0, 1)"),
)  # fmt: skip
# Every key of configs/base.py, and of the classifier presets' section, with its rule.
RULES: dict[str, dict[str, Rule]] = {
    "data": dict(
        dataset=choice(pipeline.DATASETS), data_dir=TEXT, folder=TEXT,
        image_size=integer(0), random_flip=BOOL, use_labels=BOOL, num_workers=integer(0),
        skip_unreadable=BOOL,
    ),
    "model": dict(
        name=choice(MODEL_NAMES), **_ENCODER, resamp_with_conv=BOOL, num_classes=integer(0),
        dtype=choice(DTYPES), mlp_hidden=integer(1), mlp_layers=integer(0),
    ),
    "diffusion": dict(
        beta_schedule=choice(schedules.BETA_SCHEDULES), num_timesteps=integer(2),
        mean_type=choice(diffusion.MEAN_TYPES), var_type=choice(diffusion.VAR_TYPES),
        loss_type=choice(losses.LOSS_TYPES), timestep_sampler=choice(TIMESTEP_SAMPLERS),
        class_drop_prob=number("[0, 1]"),
    ),
    "optim": dict(
        optimizer=choice(OPTIMIZERS), learning_rate=number("(0, inf)"), warmup_steps=integer(0),
        schedule=choice(LR_SCHEDULES), decay_steps=integer(0), final_lr_fraction=number("[0, 1]"),
        beta1=number("[0, 1)"), beta2=number("[0, 1)"), eps=number("(0, inf)"),
        weight_decay=number("[0, inf)"), grad_clip=number("[0, inf)"),
    ),
    "training": dict(
        batch_size=integer(1), num_steps=integer(1), grad_accum_steps=integer(1),
        fsdp=integer(1), ema_decay=number("[0, 1)"), ema_warmup=BOOL, log_every=integer(1),
        checkpoint_every=integer(1), keep_checkpoints=integer(1), keep_every=integer(0),
        async_checkpoints=BOOL, sample_every=integer(0), num_samples=integer(0),
        sample_respacing=TEXT, eval_every=integer(0), on_nonfinite=choice(ON_NONFINITE),
        max_consecutive_skips=integer(1),
    ),
    "eval": dict(
        bpd_examples=integer(0), num_samples=integer(0), sampler=choice(SAMPLERS),
        steps=integer(0), batch_size=integer(1), features=choice(FEATURES),
        feature_workdir=TEXT, reference=TEXT,
    ),
    "classifier": dict(**_ENCODER, dtype=choice(DTYPES), max_timestep=integer(0)),
}  # fmt: skip
_SEED = integer(0, 2**63 - 1)  # jax.random.PRNGKey overflows beyond
# Keys the code reads with a default: absent means this value.
_DEFAULTS = {"data.skip_unreadable": False, "training.fsdp": 1, "classifier.dtype": "float32"}
_DEFAULTS |= {"training.max_consecutive_skips": 20, "classifier.max_timestep": 0}
# The sections each kind reads; a classifier run leaves `model` and `eval` alone.
_READS = {
    "diffusion": ("data", "model", "diffusion", "optim", "training", "eval"),
    "classifier": ("data", "diffusion", "optim", "training", "classifier"),
}
_KEYS = ("seed", *RULES, *(f"{s}.{k}" for s, rules in RULES.items() for k in rules))


def check(config: Any, *, kind: str = "diffusion") -> list[str]:
    """The problems of `config` (a ConfigDict or a dict) as a `kind` run ("diffusion": train,
    "classifier": train-classifier) would read it, one line each; [] when there are none."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    values: dict[str, Any] = {}  # the keys that passed their own rule
    problems = _check_sections(tree, kind, values)
    problems += _data_shape(values)
    for kinds, keys, rule in _BETWEEN:
        if kind in kinds and all(k in values for k in keys):
            problems += rule(*(values[k] for k in keys))
    return problems


def validate(config: Any, *, kind: str = "diffusion") -> None:
    """Raises ConfigError naming every problem `check` finds, in one line; else returns None."""
    problems = check(config, kind=kind)
    if problems:
        raise ConfigError("config: " + "; ".join(problems))


def _unknown(key: str) -> str:
    near = _near(key, _KEYS)
    return f"{key}: unknown key" + (f"; did you mean {near}?" if near else "")


def _check_sections(tree: Mapping, kind: str, values: dict) -> list[str]:
    """Unknown top-level keys, the seed and each section `kind` reads (training/classifier.py
    `_check_config`: train-classifier needs the classifier section)."""
    problems = [_unknown(name) for name in tree if name != "seed" and name not in RULES]
    if kind == "diffusion" and "classifier" in tree:
        problems.append("classifier: a train-classifier section, which train does not read")
    if "seed" not in tree:
        problems.append("seed is missing (see diffusion_jax/configs/base.py)")
    elif problem := _SEED("seed", tree["seed"]):
        problems.append(problem)
    else:
        values["seed"] = tree["seed"]
    for name in _READS[kind]:
        section = tree.get(name)
        if section is None:
            start = "digits_classifier.py" if name == "classifier" else "base.py"
            problems.append(f"{name}: missing section (start from diffusion_jax/configs/{start})")
        elif not isinstance(section, Mapping):
            problems.append(f"{name} must be a section of keys, got {_show(section, False)}")
        else:
            problems += _check_section(name, section, values)
    return problems


def _check_section(name: str, section: Mapping, values: dict) -> list[str]:
    problems = [_unknown(f"{name}.{key}") for key in section if key not in RULES[name]]
    for key, rule in RULES[name].items():
        dotted = f"{name}.{key}"
        if key not in section:
            if dotted in _DEFAULTS:
                values[dotted] = _DEFAULTS[dotted]
            else:
                problems.append(f"{dotted} is missing (see diffusion_jax/configs/base.py)")
        elif problem := rule(dotted, section[key]):
            problems.append(problem)
        else:
            values[dotted] = section[key]
    return problems


def _data_shape(values: dict) -> list[str]:
    """Sets values["data.shape"], one example's shape; data/pipeline.py `_image_shape`: folder
    and LSUN images differ in size, so they need data.image_size."""
    if "data.dataset" not in values or "data.image_size" not in values:
        return []
    name, size = values["data.dataset"], values["data.image_size"]
    try:
        shape = pipeline.example_shape(types.SimpleNamespace(dataset=name, image_size=size))
    except ValueError:
        return [f"data.image_size must be > 0 for {name!r}, whose images differ in size, got 0"]
    values["data.shape"] = tuple(shape)
    return []


# (kinds, keys, rule): rule(*the keys' values) -> problems, run once each key passed its own rule.
_BETWEEN: list[tuple[tuple[str, ...], tuple[str, ...], Callable[..., list[str]]]] = []
_DIFFUSION, _CLASSIFIER = ("diffusion",), ("classifier",)


def _between(keys: str, kinds: tuple[str, ...] = KINDS):
    """Registers a rule between the space-separated `keys`, for runs of `kinds`."""

    def register(fn: Callable[..., Iterable[str]]):
        _BETWEEN.append((kinds, tuple(keys.split()), lambda *values: list(fn(*values))))
        return fn

    return register


def _when(keys: str, broken: Callable[..., Any], message: str, kinds=KINDS) -> None:
    """Registers `message` (formatted with the keys' values by last name: "{folder}") as the
    problem when `broken(*values)`."""
    names = [key.rpartition(".")[2] for key in keys.split()]

    def rule(*values):
        return [message.format(**dict(zip(names, values, strict=True)))] if broken(*values) else []

    _between(keys, kinds)(rule)


def _encoder_fits(prefix: str, ch: int, ch_mult, attn, shape) -> Iterator[str]:
    """The U-Net encoder's needs of the data: a size that halves len(ch_mult) - 1 times,
    GroupNorm-divisible widths, and attention only at a resolution that one of its levels has."""
    if len(shape) != 3:
        return
    size, factor = shape[0], 2 ** (len(ch_mult) - 1)
    if shape[0] % factor or shape[1] % factor:
        yield f"{prefix}.ch_mult={tuple(ch_mult)} needs a size divisible by {factor}, got {shape}"
    if widths := [ch * m for m in (1, *ch_mult) if (ch * m) % GROUPNORM_GROUPS]:
        yield f"{prefix}.ch * ch_mult must be multiples of {GROUPNORM_GROUPS}, got {widths}"
    levels = [size // 2**i for i in range(len(ch_mult))]
    if missed := [r for r in attn if r not in levels]:
        yield f"{prefix}.attn_resolutions has {missed}, which no level has (levels: {levels})"


# Where the code enforces each (or would silently ignore a key), file `function`:
# fmt: off
# data/pipeline.py `_folder_source`, `make_train_iterator`; training/train.py `train`
_when("data.dataset data.folder", lambda dataset, folder: dataset == "folder" and not folder,
      "data.folder must name the image folder of data.dataset 'folder', got ''")
_when("data.random_flip data.dataset data.shape", lambda flip, _, shape: flip and len(shape) != 3,
      "data.random_flip=True mirrors images, but {dataset!r} has vectors {shape}")
_when("model.num_classes data.use_labels", lambda n, labels: n > 0 and not labels,
      "model.num_classes={num_classes} needs data.use_labels=True, got False")
# models/factory.py `create_model` (the MLP takes no dtype)
_when("model.name data.dataset data.shape", lambda name, _, s: (name == "unet") != (len(s) == 3),
      "model.name={name!r} does not fit {dataset!r} examples of shape {shape}: use 'unet' for "
      "images, 'mlp' for vectors")
_when("model.name model.dtype", lambda name, dtype: name == "mlp" and dtype != "float32",
      "model.dtype={dtype!r} is not used by model.name='mlp': set 'float32'")
# core/schedules.py `schedule_from_betas` (betas in (0, 1): they are > 0, and only schedules
# shorter than 1000 steps reach 1, their endpoints scaled by 1000/T); core/losses.py
# `losses_from_output`
_when("diffusion.beta_schedule diffusion.num_timesteps",
      lambda name, t: np.any(schedules.get_beta_schedule(name, min(t, 1000)) >= 1),
      "diffusion.num_timesteps={num_timesteps} is too few for beta_schedule={beta_schedule!r}: "
      "its betas reach 1 (use more steps, or 'cosine')")
_when("diffusion.loss_type diffusion.var_type",
      lambda loss, var: loss == "hybrid" and not diffusion.learns_variance(var),
      "diffusion.loss_type='hybrid' needs a learned var_type, got {var_type!r}", _DIFFUSION)
# setup.py `learning_rate_schedule` (decays over max(decay_steps - warmup_steps, 1) steps)
_when("optim.schedule optim.warmup_steps optim.decay_steps",
      lambda schedule, warmup, decay: schedule != "constant" and decay <= warmup,
      "optim.decay_steps must be > optim.warmup_steps={warmup_steps} for optim.schedule="
      "{schedule!r} (the step where the decay ends), got {decay_steps}")
_when("optim.schedule optim.decay_steps optim.final_lr_fraction",
      lambda schedule, decay, final: schedule == "constant" and (decay or final),
      "optim.schedule='constant' ignores optim.decay_steps={decay_steps} and final_lr_fraction="
      "{final_lr_fraction}: set both 0, or choose a decaying schedule")
# setup.py `make_optimizer` (Adam takes no weight decay)
_when("optim.optimizer optim.weight_decay", lambda opt, decay: decay and opt != "adamw",
      "optim.weight_decay={weight_decay} needs optim.optimizer='adamw', got {optimizer!r}")
# training/train.py `check_batch`; training/classifier.py `train_classifier` (a data mesh, no
# micro-batches); checkpoint.py `Checkpointer` (keeps saved steps only)
_when("training.batch_size training.grad_accum_steps", lambda batch, accum: batch % accum,
      "training.grad_accum_steps={grad_accum_steps} must divide batch_size={batch_size}",
      _DIFFUSION)
_when("training.grad_accum_steps training.fsdp", lambda accum, fsdp: accum != 1 or fsdp != 1,
      "training.grad_accum_steps={grad_accum_steps} and fsdp={fsdp} are not used by "
      "train-classifier: set both 1", _CLASSIFIER)
_when("training.keep_every training.checkpoint_every", lambda keep, every: keep % every,
      "training.keep_every={keep_every} must be 0 or a multiple of training.checkpoint_every="
      "{checkpoint_every}")
# training/hooks.py `sample_grid`
_when("training.sample_every training.num_samples", lambda every, num: every and num < 1,
      "training.num_samples must be >= 1 when sample_every > 0, got {num_samples}", _DIFFUSION)
# the evaluation hook when eval_every > 0 and num_samples > 0: evaluation/metrics.py
# `inception_score` (10 splits), sampling/generate.py `sampling_schedule` (eval.steps respaced as
# "N"), evaluation/features.py `get_extractor` and `dataset_images` (images only)
_when("training.eval_every eval.num_samples", lambda every, num: every and 0 < num < 10,
      "eval.num_samples must be 0 or >= 10 (the Inception Score's 10 splits), got {num_samples}")
_when("training.eval_every eval.num_samples eval.steps diffusion.num_timesteps",
      lambda every, num, steps, t: every and num and (steps == 1 or steps > t),
      "eval.steps must be 0 (all) or in 2..{num_timesteps} (num_timesteps), got {steps}")
_when("training.eval_every eval.num_samples eval.features eval.feature_workdir",
      lambda every, num, features, path: every and num and features == "classifier" and not path,
      "eval.feature_workdir must name a train-classifier run (eval.features), got ''")
_when("training.eval_every eval.num_samples data.shape",
      lambda every, num, shape: every and num and len(shape) != 3,
      "eval.num_samples={num_samples}: the sample metrics need images, the data are {shape}")
# training/classifier.py `_check_config`, `train_classifier`, `max_timestep`
_when("data.use_labels", lambda labels: not labels,
      "data.use_labels must be True for train-classifier (labels), got False", _CLASSIFIER)
_when("data.dataset data.shape", lambda _, shape: len(shape) != 3,
      "train-classifier needs images, but {dataset!r} has vectors {shape}", _CLASSIFIER)
_when("classifier.max_timestep diffusion.num_timesteps", lambda m, t: m > t,
      "classifier.max_timestep must be in 0..{num_timesteps} (0: all), got {max_timestep}")
# models/layers.py `check_encoder_inputs`; attention no level has would be left out silently
_between("model.name model.ch model.ch_mult model.attn_resolutions data.shape")(
    lambda name, *rest: _encoder_fits("model", *rest) if name == "unet" else [])
_between("classifier.ch classifier.ch_mult classifier.attn_resolutions data.shape")(
    functools.partial(_encoder_fits, "classifier"))
# fmt: on


@_between("training.sample_every training.sample_respacing diffusion.num_timesteps", _DIFFUSION)
def _sample_respacing(every, respacing, num_timesteps):
    """training/hooks.py `sample_grid` through core/schedules.py `make_schedule`."""
    if every and respacing:
        try:
            kept = schedules.space_timesteps(num_timesteps, respacing)
            why = f"it keeps {len(kept)} step; a respaced schedule needs 2 or more"
        except ValueError as e:
            kept, why = [], str(e).rstrip(".")
        if len(kept) < 2:
            yield f"training.sample_respacing={respacing!r} of {num_timesteps} steps: {why}"
