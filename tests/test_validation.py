"""Config validation (diffusion_jax.validation): every preset passes, each bad value is named with
what is allowed, the rules between keys fire only when their switch is on, and the names and
ranges accepted are those the code accepts. Nothing here compiles."""

from __future__ import annotations

import copy
import itertools
import json
import re

import ml_collections
import numpy as np
import pytest

from diffusion_jax import configs, setup, validation
from diffusion_jax.core import schedules
from diffusion_jax.errors import ConfigError, UserError
from diffusion_jax.models import factory, layers

CLASSIFIER_PRESETS = ("digits_classifier", "digits_features")
EVAL_ON = {"training.eval_every": 100, "eval.num_samples": 50}


def kind_of(name: str) -> str:
    return "classifier" if name in CLASSIFIER_PRESETS else "diffusion"


def edited(name: str, changes: dict, drop: tuple[str, ...] = ()) -> dict:
    """The preset `name` as a plain dict, with dotted `changes` set and `drop` keys removed."""
    tree = copy.deepcopy(configs.get_config(name).to_dict())
    for key, value in changes.items():
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node[section]
        node[leaf] = value
    for key in drop:
        section, _, leaf = key.rpartition(".")
        del (tree[section] if section else tree)[leaf]
    return tree


def problems_of(name: str, changes: dict, **kw) -> list[str]:
    return validation.check(edited(name, changes, **kw), kind=kind_of(name))


# ----------------------------------------------------------------------------- what passes


@pytest.mark.parametrize("name", configs.PRESETS)
def test_every_preset_validates(name):
    config = configs.get_config(name)
    assert ("classifier" in config) == (name in CLASSIFIER_PRESETS)
    assert validation.check(config, kind=kind_of(name)) == []
    validation.validate(config, kind=kind_of(name))


def test_a_config_is_checked_as_the_kind_of_run_that_reads_it():
    as_diffusion = validation.check(configs.get_config("digits_classifier"))
    assert as_diffusion[0].startswith("classifier: a train-classifier section")
    as_classifier = validation.check(configs.get_config("digits"), kind="classifier")
    assert as_classifier == [
        "classifier: missing section (start from diffusion_jax/configs/digits_classifier.py)",
        "data.use_labels must be True for train-classifier (labels), got False",
    ]
    # train-classifier reads neither config.model nor config.eval
    assert problems_of("digits_classifier", {"model.ch": -1, "eval.sampler": "x"}) == []
    with pytest.raises(ValueError, match="kind must be one of"):
        validation.check(configs.get_config("digits"), kind="sampler")


def _ddpm_checkpoint(size: int, channels: list[int], attn_level: int) -> dict:
    """A UNet2DModel config.json of the DDPM layout (the fields diffusion_jax reproduces)."""
    down = ["AttnDownBlock2D" if i == attn_level else "DownBlock2D" for i in range(len(channels))]
    up = [name.replace("Down", "Up") for name in reversed(down)]
    return dict(
        sample_size=size, block_out_channels=channels, down_block_types=down, up_block_types=up,
        layers_per_block=2, freq_shift=1, flip_sin_to_cos=False, downsample_padding=0,
        norm_eps=1e-6, norm_num_groups=32, in_channels=3, out_channels=3, attention_head_dim=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "preset, checkpoint",
    [
        ("cifar10", _ddpm_checkpoint(32, [32, 64, 64, 64], attn_level=1)),
        ("celebahq256", _ddpm_checkpoint(64, [32, 32, 64, 64, 128, 128], attn_level=4)),
        ("lsun_church", _ddpm_checkpoint(64, [32, 32, 64, 64, 128, 128], attn_level=4)),
        ("lsun_bedroom", _ddpm_checkpoint(256, [32, 32, 64, 64, 128, 128], attn_level=4)),
        ("lsun_cat", _ddpm_checkpoint(128, [32, 32, 64, 64, 128, 128], attn_level=4)),
    ],
)
def test_the_configs_the_importer_writes_validate(preset, checkpoint):
    from diffusion_jax.pretrained import diffusers, importer

    scheduler = dict(beta_schedule="linear", num_train_timesteps=1000, variance_type="fixed_small")
    kwargs = diffusers.ddpm_unet_kwargs(checkpoint)
    config, _, changes = importer.imported_config(checkpoint, kwargs, scheduler, preset)
    assert any(c.startswith("model.ch:") for c in changes)
    assert validation.check(config) == []
    # config.json as written (tuples become lists) and read back
    saved = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
    assert isinstance(saved.model.ch_mult, list) and validation.check(saved) == []


# ----------------------------------------------------------------------------- one key at a time

BAD_VALUES = [
    ("seed", -1, "seed must be an integer in 0..9223372036854775807, got -1"),
    ("seed", 1.0, "seed must be an integer in 0..9223372036854775807, got 1.0 (float)"),
    ("data.image_size", -8, "data.image_size must be an integer >= 0, got -8"),
    ("data.num_workers", -1, "data.num_workers must be an integer >= 0, got -1"),
    ("data.random_flip", 1, "data.random_flip must be True or False, got 1 (int)"),
    ("data.skip_unreadable", "yes", "data.skip_unreadable must be True or False, got 'yes' (str)"),
    ("data.data_dir", None, "data.data_dir must be a string, got None (NoneType)"),
    ("model.ch", 0, "model.ch must be an integer >= 1, got 0"),
    ("model.ch_mult", (1, 0), "model.ch_mult must be a non-empty tuple of integers >= 1, got (1,"),
    ("model.ch_mult", (), "model.ch_mult must be a non-empty tuple of integers >= 1, got ()"),
    ("model.ch_mult", 2, "model.ch_mult must be a non-empty tuple of integers >= 1, got 2 (int)"),
    ("model.attn_resolutions", (4.0,), "model.attn_resolutions must be a tuple of integers >= 1"),
    ("model.num_res_blocks", -1, "model.num_res_blocks must be an integer >= 0, got -1"),
    ("model.dropout", 1.0, "model.dropout must be a number in [0, 1), got 1.0"),
    ("model.num_classes", -1, "model.num_classes must be an integer >= 0, got -1"),
    ("model.resamp_with_conv", "True", "model.resamp_with_conv must be True or False, got 'True'"),
    ("model.mlp_hidden", 0, "model.mlp_hidden must be an integer >= 1, got 0"),
    ("diffusion.num_timesteps", 1, "diffusion.num_timesteps must be an integer >= 2, got 1"),
    ("diffusion.class_drop_prob", 1.5, "diffusion.class_drop_prob must be a number in [0, 1]"),
    ("optim.learning_rate", 0.0, "optim.learning_rate must be a number > 0, got 0.0"),
    ("optim.learning_rate", float("nan"), "optim.learning_rate must be a number > 0, got nan"),
    ("optim.learning_rate", "1e-3", "optim.learning_rate must be a number > 0, got '1e-3' (str)"),
    ("optim.warmup_steps", -1, "optim.warmup_steps must be an integer >= 0, got -1"),
    ("optim.decay_steps", 10.0, "optim.decay_steps must be an integer >= 0, got 10.0 (float)"),
    ("optim.final_lr_fraction", 2, "optim.final_lr_fraction must be a number in [0, 1], got 2"),
    ("optim.beta1", 1.0, "optim.beta1 must be a number in [0, 1), got 1.0"),
    ("optim.beta2", -0.5, "optim.beta2 must be a number in [0, 1), got -0.5"),
    ("optim.eps", 0, "optim.eps must be a number > 0, got 0"),
    ("optim.weight_decay", -0.1, "optim.weight_decay must be a number >= 0, got -0.1"),
    ("optim.grad_clip", float("inf"), "optim.grad_clip must be a number >= 0, got inf"),
    ("training.batch_size", 0, "training.batch_size must be an integer >= 1, got 0"),
    ("training.num_steps", 0, "training.num_steps must be an integer >= 1, got 0"),
    ("training.grad_accum_steps", 0, "training.grad_accum_steps must be an integer >= 1, got 0"),
    ("training.fsdp", 0, "training.fsdp must be an integer >= 1, got 0"),
    ("training.ema_decay", 1.0, "training.ema_decay must be a number in [0, 1), got 1.0"),
    ("training.log_every", 0, "training.log_every must be an integer >= 1, got 0"),
    ("training.checkpoint_every", 0, "training.checkpoint_every must be an integer >= 1, got 0"),
    ("training.keep_checkpoints", 0, "training.keep_checkpoints must be an integer >= 1, got 0"),
    ("training.keep_every", -1, "training.keep_every must be an integer >= 0, got -1"),
    ("training.sample_every", -1, "training.sample_every must be an integer >= 0, got -1"),
    ("training.eval_every", -1, "training.eval_every must be an integer >= 0, got -1"),
    ("training.num_samples", -1, "training.num_samples must be an integer >= 0, got -1"),
    ("training.sample_respacing", 250, "training.sample_respacing must be a string, got 250 (int)"),
    ("training.max_consecutive_skips", 0, "training.max_consecutive_skips must be an integer >= 1"),
    ("eval.bpd_examples", -1, "eval.bpd_examples must be an integer >= 0, got -1"),
    ("eval.num_samples", -1, "eval.num_samples must be an integer >= 0, got -1"),
    ("eval.steps", -1, "eval.steps must be an integer >= 0, got -1"),
    ("eval.batch_size", 0, "eval.batch_size must be an integer >= 1, got 0"),
    ("eval.feature_workdir", 0, "eval.feature_workdir must be a string, got 0 (int)"),
]


@pytest.mark.parametrize("key, value, problem", BAD_VALUES)
def test_a_bad_value_is_named_with_what_is_allowed(key, value, problem):
    problems = problems_of("digits", {key: value})
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    with pytest.raises(ConfigError, match=re.escape(problem)) as error:
        validation.validate(edited("digits", {key: value}))
    assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)


def _base_keys(kind: type) -> list[str]:
    return [k for k, v in _flat(configs.base_config().to_dict()) if type(v) is kind]


def _flat(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("key", _base_keys(int))
def test_a_bool_is_not_an_integer(key):
    (problem,) = problems_of("digits", {key: True})
    assert problem.startswith(f"{key} must be an integer") and problem.endswith("True (bool)")


@pytest.mark.parametrize("key", _base_keys(float))
def test_a_bool_is_not_a_number_but_an_int_is(key):
    (problem,) = problems_of("digits", {key: False})
    assert problem.startswith(f"{key} must be a number") and problem.endswith("False (bool)")
    assert problems_of("digits", {"optim.learning_rate": 1, "optim.grad_clip": 0}) == []


@pytest.mark.parametrize("key", _base_keys(bool))
def test_an_int_is_not_a_bool(key):
    assert problems_of("digits", {key: 0}) == [f"{key} must be True or False, got 0 (int)"]


@pytest.mark.parametrize(
    "key, typo, meant",
    [
        ("data.dataset", "cifar", "cifar10"),
        ("data.dataset", "lsun_cat", "lsun/cat"),
        ("model.name", "unte", "unet"),
        ("model.dtype", "bfloat", "bfloat16"),
        ("diffusion.beta_schedule", "cosin", "cosine"),
        ("diffusion.mean_type", "epsilon", "eps"),
        ("diffusion.var_type", "learned_ranged", "learned_range"),
        ("diffusion.loss_type", "hybird", "hybrid"),
        ("diffusion.timestep_sampler", "importanc", "importance"),
        ("optim.optimizer", "AdamW", "adamw"),
        ("optim.schedule", "Cosine", "cosine"),
        ("training.on_nonfinite", "skipp", "skip"),
        ("eval.sampler", "ancestrial", "ancestral"),
        ("eval.features", "inceptionv3", "inception"),
    ],
)
def test_a_mistyped_name_suggests_the_nearest(key, typo, meant):
    (problem,) = problems_of("digits", {key: typo})
    assert problem.startswith(f"{key}: unknown value {typo!r}; did you mean {meant!r}? (choose")
    assert problem.endswith(")") and f" {meant}," in problem.replace(")", ",")


def test_a_name_without_a_near_one_lists_the_choices():
    assert problems_of("digits", {"diffusion.beta_schedule": "zzz"}) == [
        "diffusion.beta_schedule: unknown value 'zzz' (choose one of linear, cosine, quadratic, "
        "sigmoid)"
    ]
    assert problems_of("digits", {"model.dtype": 16}) == [
        "model.dtype must be one of float32, bfloat16, got 16 (int)"
    ]


def test_unknown_and_missing_keys_are_named():
    typos = {"training.batch_sise": 64, "training.learning_rate": 1e-3, "trainig": {}}
    assert problems_of("digits", typos) == [
        "trainig: unknown key; did you mean training?",
        "training.batch_sise: unknown key; did you mean training.batch_size?",
        "training.learning_rate: unknown key; did you mean optim.learning_rate?",
    ]
    assert problems_of("digits", {}, drop=("training.log_every", "optim")) == [
        "optim: missing section (start from diffusion_jax/configs/base.py)",
        "training.log_every is missing (see diffusion_jax/configs/base.py)",
    ]
    assert problems_of("digits", {"data": "digits"}) == [
        "data must be a section of keys, got 'digits' (str)"
    ]
    # keys the code reads with a default (as a config saved before they were added) may be absent
    optional = ("training.fsdp", "training.max_consecutive_skips", "data.skip_unreadable")
    assert problems_of("digits", {}, drop=optional) == []
    classifier = ("classifier.dtype", "classifier.max_timestep")
    assert problems_of("digits_features", {}, drop=classifier) == []


def test_every_problem_is_reported_in_one_line():
    changes = {
        "training.log_every": 0,
        "training.batch_size": True,
        "diffusion.beta_schedule": "cosin",
        "optim.schedule": "cosine",  # and decay_steps = 0: a rule between keys
        "data.folder": "a\nb",  # fine as a string; not read for digits
        "model.dropout": "0.1\n",
    }
    tree = edited("digits", changes)
    problems = validation.check(tree)
    assert len(problems) == 5
    with pytest.raises(ConfigError) as error:
        validation.validate(tree)
    message = str(error.value)
    assert message == "config: " + "; ".join(problems) and "\n" not in message
    for fragment in (
        "training.log_every must be an integer >= 1, got 0",
        "training.batch_size must be an integer >= 1, got True (bool)",
        "diffusion.beta_schedule: unknown value 'cosin'; did you mean 'cosine'?",
        "optim.decay_steps must be > optim.warmup_steps=200",
        r"model.dropout must be a number in [0, 1), got '0.1\n' (str)",
    ):
        assert fragment in message


# ----------------------------------------------------------------------------- between keys

BROKEN = [
    ("digits", {"data.dataset": "folder", "data.image_size": 8}, "data.folder must name"),
    ("digits", {"data.dataset": "folder", "data.folder": "/x"}, "data.image_size must be > 0"),
    ("digits", {"data.dataset": "lsun/cat"}, "data.image_size must be > 0 for 'lsun/cat'"),
    ("toy2d", {"data.random_flip": True}, "data.random_flip=True mirrors images, but 'toy2d'"),
    ("digits", {"model.num_classes": 10}, "model.num_classes=10 needs data.use_labels=True"),
    ("toy2d", {"model.name": "unet"}, "model.name='unet' does not fit 'toy2d' examples of"),
    ("digits", {"model.name": "mlp"}, "model.name='mlp' does not fit 'digits' examples of"),
    ("toy2d", {"model.dtype": "bfloat16"}, "model.dtype='bfloat16' is not used by model.name="),
    ("digits", {"model.ch_mult": (1, 2, 2, 2, 2)}, "model.ch_mult=(1, 2, 2, 2, 2) needs a size "),
    ("digits", {"model.ch": 48}, "model.ch * ch_mult must be multiples of 32, got [48, 48]"),
    ("digits", {"model.attn_resolutions": (16,)}, "model.attn_resolutions has [16], which no "),
    ("digits", {"diffusion.loss_type": "hybrid"}, "'hybrid' needs a learned var_type, got 'fixed"),
    ("tiny", {"diffusion.beta_schedule": "linear", "diffusion.num_timesteps": 20}, "is too few"),
    ("digits", {"optim.schedule": "linear"}, "optim.decay_steps must be > optim.warmup_steps=200"),
    ("digits", {"optim.decay_steps": 1000}, "optim.schedule='constant' ignores optim.decay_steps"),
    ("digits", {"optim.weight_decay": 0.01}, "optim.weight_decay=0.01 needs optim.optimizer="),
    ("digits", {"training.grad_accum_steps": 3}, "grad_accum_steps=3 must divide batch_size=64"),
    ("digits", {"training.keep_every": 750}, "training.keep_every=750 must be 0 or a multiple"),
    ("digits", {"training.num_samples": 0}, "training.num_samples must be >= 1 when sample_every"),
    ("digits", {"training.sample_respacing": "25O"}, "of 1000 steps: Bad respacing '25O'"),
    ("digits", {"training.sample_respacing": "2000"}, "Cannot take 2000 steps from a section"),
    ("digits", {"training.sample_respacing": "1"}, "'1' of 1000 steps: it keeps 1 step"),
    ("digits", {**EVAL_ON, "eval.num_samples": 5}, "eval.num_samples must be 0 or >= 10"),
    ("digits", {**EVAL_ON, "eval.steps": 1}, "eval.steps must be 0 (all) or in 2..1000"),
    ("tiny", {**EVAL_ON, "eval.steps": 51}, "eval.steps must be 0 (all) or in 2..50"),
    ("digits", {**EVAL_ON, "eval.features": "classifier"}, "eval.feature_workdir must name"),
    ("toy2d", EVAL_ON, "eval.num_samples=50: the sample metrics need images"),
    ("digits_classifier", {"data.use_labels": False}, "data.use_labels must be True for train-"),
    ("digits_classifier", {"data.dataset": "toy2d"}, "train-classifier needs images"),
    ("digits_classifier", {"classifier.max_timestep": 1001}, "max_timestep must be in 0..1000"),
    ("digits_classifier", {"classifier.ch": 40}, "classifier.ch * ch_mult must be multiples"),
    ("digits_classifier", {"training.fsdp": 2}, "fsdp=2 are not used by train-classifier"),
    ("digits_classifier", {"training.grad_accum_steps": 2}, "grad_accum_steps=2 and fsdp=1 are"),
]


@pytest.mark.parametrize("preset, changes, problem", BROKEN)
def test_a_rule_between_keys_is_checked_before_compiling(preset, changes, problem):
    problems = problems_of(preset, changes)
    assert len(problems) == 1 and problem in problems[0], problems


FINE = [
    ("digits", {"training.sample_every": 0, "training.sample_respacing": "x"}),
    ("digits", {"training.sample_every": 0, "training.num_samples": 0}),
    ("digits", {"eval.num_samples": 5, "eval.steps": 1, "eval.features": "classifier"}),
    ("toy2d", {"training.eval_every": 100, "eval.bpd_examples": 10}),
    ("digits", {**EVAL_ON, "eval.features": "classifier", "eval.feature_workdir": "runs/f"}),
    ("tiny", {**EVAL_ON, "eval.steps": 0}),
    ("tiny", {**EVAL_ON, "eval.steps": 2}),
    ("digits", {"optim.schedule": "cosine", "optim.decay_steps": 201}),
    ("digits", {"optim.optimizer": "adamw", "optim.weight_decay": 0.01}),
    ("digits", {"data.dataset": "folder", "data.folder": "/nowhere", "data.image_size": 8}),
    ("digits", {"data.dataset": "lsun/cat", "data.image_size": 8}),
    ("digits", {"model.num_classes": 10, "data.use_labels": True}),
    ("digits", {"model.attn_resolutions": (), "model.ch": 32}),
    ("digits", {"training.fsdp": 4, "training.grad_accum_steps": 2, "training.keep_every": 1000}),
    ("tiny", {"diffusion.beta_schedule": "linear", "diffusion.num_timesteps": 21}),
    ("tiny", {"diffusion.beta_schedule": "cosine", "diffusion.num_timesteps": 2}),
    ("digits", {"training.sample_respacing": " ddim50 "}),
    ("digits", {"training.sample_respacing": "ddimq25"}),
    ("digits", {"training.sample_respacing": "10,15,20"}),
    ("digits_classifier", {"classifier.max_timestep": 1000, "diffusion.loss_type": "hybrid"}),
]  # fmt: skip


@pytest.mark.parametrize("preset, changes", FINE)
def test_a_rule_between_keys_waits_for_its_switch(preset, changes):
    assert problems_of(preset, changes) == []


# ----------------------------------------------------------------------------- as the code reads it


@pytest.mark.parametrize("num_timesteps", [50, 1000])
def test_the_respacings_accepted_are_those_make_schedule_takes(num_timesteps):
    specs = ["250", "50", "51", " 25 ", "ddim50", "ddim600", "ddim7", "ddimq25", "ddimq1"]
    specs += ["10,15,20", "1,1", "1", "0", "-3", "25O", "ddim", ","]
    for spec in specs:
        try:
            schedules.make_schedule("linear", num_timesteps, respacing=spec)
            takes = True
        except ValueError:
            takes = False
        changes = {"diffusion.num_timesteps": num_timesteps, "training.sample_every": 1}
        tree = edited("tiny", {**changes, "training.sample_respacing": spec})
        assert (validation.check(tree) == []) == takes, spec


def test_the_eval_steps_accepted_are_those_generate_takes():
    from diffusion_jax.sampling import generate

    config = configs.get_config("tiny")  # 50 steps
    for steps in range(0, 53):
        try:
            generate.sampling_schedule(config, steps)
            takes = True
        except ValueError:
            takes = False
        assert (problems_of("tiny", {**EVAL_ON, "eval.steps": steps}) == []) == takes, steps


def test_the_schedule_lengths_accepted_are_those_make_schedule_takes():
    for name, steps in itertools.product(schedules.BETA_SCHEDULES, [2, 10, 20, 21, 40, 999, 4000]):
        try:
            schedules.make_schedule(name, steps)
            takes = True
        except ValueError:
            takes = False
        changes = {"diffusion.beta_schedule": name, "diffusion.num_timesteps": steps}
        assert (problems_of("toy2d", changes) == []) == takes, (name, steps)


def test_the_network_shapes_accepted_are_those_the_unet_takes():
    cases = itertools.product([8, 12, 16, 28], [16, 32, 64], [(1,), (1, 2), (1, 2, 2), (1, 3)])
    for size, ch, ch_mult in cases:
        try:
            x, t = np.zeros((1, size, size, 1)), np.zeros((1,))
            layers.check_encoder_inputs(x, t, ch, ch_mult)
            takes = True
        except ValueError:
            takes = False
        model = {"model.ch": ch, "model.ch_mult": ch_mult, "model.attn_resolutions": ()}
        changes = {**model, "data.image_size": size}
        assert (problems_of("digits", changes) == []) == takes, (size, ch, ch_mult)


def test_the_optimizers_and_schedules_listed_are_those_setup_takes():
    optim = configs.get_config("tiny").optim
    optim.decay_steps = 100
    for optimizer, schedule in itertools.product(validation.OPTIMIZERS, validation.LR_SCHEDULES):
        optim.update(optimizer=optimizer, schedule=schedule)
        setup.make_optimizer(optim)
    for key, bad in (("optimizer", "sgd"), ("schedule", "step")):
        optim.update(optimizer="adam", schedule="constant")
        optim[key] = bad
        with pytest.raises(ValueError, match=bad):
            setup.make_optimizer(optim)


def test_the_networks_and_dtypes_listed_are_those_the_factory_builds():
    config = configs.get_config("tiny")
    shapes = zip(validation.MODEL_NAMES, [(8, 8, 1), (2,)], strict=True)
    for (name, shape), dtype in itertools.product(shapes, validation.DTYPES):
        config.model.update(name=name, dtype=dtype)
        factory.create_model(config, shape)
    for key, bad in (("name", "dit"), ("dtype", "float16")):
        config.model.update(name="unet", dtype="float32")
        config.model[key] = bad
        with pytest.raises(ValueError, match=bad):
            factory.create_model(config, (8, 8, 1))


def test_the_timestep_samplers_listed_are_those_the_step_takes():
    from diffusion_jax.training import step

    config = configs.get_config("tiny")
    for sampler in validation.TIMESTEP_SAMPLERS:
        config.diffusion.timestep_sampler = sampler
        step.make_train_step(setup.diffusion_parts(config, example_shape=(8, 8, 1)))
    config.diffusion.timestep_sampler = "stratified"
    with pytest.raises(ValueError, match="stratified"):
        step.make_train_step(setup.diffusion_parts(config, example_shape=(8, 8, 1)))


def test_the_samplers_listed_are_those_generate_takes(monkeypatch):
    from diffusion_jax.sampling import generate

    class Accepted(Exception):
        pass

    def accepted(*args, **kwargs):
        raise Accepted

    monkeypatch.setattr(generate, "_labels", accepted)  # the first step after the sampler check
    for sampler in validation.SAMPLERS:
        with pytest.raises(Accepted):
            generate.generate(None, num=1, sampler=sampler)
    with pytest.raises(ValueError, match="sampler must be"):
        generate.generate(None, num=1, sampler="plms")


def test_the_other_names_listed_are_the_code_s_own():
    from diffusion_jax.evaluation import features
    from diffusion_jax.training import state

    assert validation.ON_NONFINITE == state.ON_NONFINITE
    assert validation.FEATURES == features.EXTRACTORS
