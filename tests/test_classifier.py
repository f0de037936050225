"""The noise-aware classifier: architecture, the guidance gradient, training, loading, the CLI."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import checkpoint, cli, configs
from diffusion_jax.core import schedules
from diffusion_jax.models import UNet
from diffusion_jax.models.classifier import (
    NoisyClassifier,
    classifier_log_prob,
    make_classifier_apply_fn,
    make_classifier_cond_fn,
)
from diffusion_jax.sampling import runs
from diffusion_jax.training import classifier as classifier_train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "digits_classifier"
SMALL = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))

# The training test: a one-level network (no downsampling) on the cosine schedule with T=100, so
# that a larger share of the sampled t leave the digit recognisable than with T=1000 linear.
TRAIN_STEPS = 100
TRAIN_OVERRIDES = [
    "--config.classifier.ch_mult=(1,)",
    "--config.classifier.attn_resolutions=()",
    "--config.diffusion.beta_schedule=cosine",
    "--config.diffusion.num_timesteps=100",
    "--config.optim.learning_rate=3e-3",
    "--config.optim.warmup_steps=5",
    "--config.training.batch_size=32",
    f"--config.training.num_steps={TRAIN_STEPS}",
    "--config.training.log_every=10",
    f"--config.training.checkpoint_every={TRAIN_STEPS}",
    "--config.training.eval_every=0",
    "--config.training.ema_decay=0.9",
    "--config.training.async_checkpoints=False",
]


def _random_params(module, x, t, std=0.3, seed=0):
    """Gaussian weights of `module`'s shapes (GroupNorm scales around 1), drawn by numpy: no init
    to compile (seconds on CPU), and unlike the real init every residual branch, hence the time
    embedding, matters."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x, t)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, s):
        mean = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return jnp.asarray(mean + std * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _load_config_file(path):
    spec = importlib.util.spec_from_file_location("_cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# ----------------------------------------------------------------------------- the network


def test_classifier_is_the_unet_encoder_with_a_pooled_head():
    clf = NoisyClassifier(num_classes=10, **SMALL)
    x = jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32)
    t = jax.ShapeDtypeStruct((3,), jnp.int32)
    params = jax.eval_shape(clf.init, jax.random.key(0), x, t)["params"]
    logits = jax.eval_shape(lambda p, x, t: clf.apply({"params": p}, x, t), params, x, t)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32

    assert set(params) == {
        "temb_dense0", "temb_dense1", "conv_in", "down_0_block_0", "down_0_downsample",
        "down_1_block_0", "down_1_attn_0", "mid_block_1", "mid_attn_1", "mid_block_2",
        "norm_out", "dense_out",
    }  # fmt: skip
    assert params["dense_out"]["kernel"].shape == (64, 10)  # ch * ch_mult[-1] pooled features
    # Every shared block has the U-Net's name and shapes (a U-Net checkpoint's encoder fits).
    unet = jax.eval_shape(UNet(**SMALL).init, jax.random.key(0), x, t)["params"]
    for name in set(params) - {"norm_out", "dense_out"}:
        assert jax.tree.map(lambda a: a.shape, params[name]) == jax.tree.map(
            lambda a: a.shape, unet[name]
        ), name


def test_logits_depend_on_t_and_only_on_their_own_example():
    clf = NoisyClassifier(num_classes=4, **SMALL)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    # Not the real init: there, as in the U-Net, each residual branch (the only path of the time
    # embedding) starts near zero and t moves the logits by ~1e-6.
    params = _random_params(clf, x, jnp.zeros((2,), jnp.int32))
    apply = jax.jit(make_classifier_apply_fn(clf))
    at_0 = apply(params, x, jnp.array([0, 0]))
    at_500 = apply(params, x, jnp.array([500, 0]))
    assert float(jnp.max(jnp.abs(at_0[0] - at_500[0]))) > 1e-2  # t changes example 0's logits
    np.testing.assert_allclose(at_500[1], at_0[1], rtol=1e-5, atol=1e-5)  # ... not example 1's
    other = apply(params, x.at[0].set(0.0), jnp.array([0, 0]))
    np.testing.assert_allclose(other[1], at_0[1], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- guidance


def test_cond_fn_is_the_gradient_of_log_p_y_given_x_times_scale():
    clf = NoisyClassifier(num_classes=3, ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
    x = jax.random.normal(jax.random.key(2), (2, 4, 4, 1))
    t, y = jnp.array([3, 40]), jnp.array([1, 2])
    params = _random_params(clf, x, t, std=0.5)
    apply = make_classifier_apply_fn(clf)
    # The scale as a traced argument, so that one compiled gradient serves both scales.
    cond_fn = jax.jit(lambda scale: make_classifier_cond_fn(apply, params, scale)(x, t, y))
    grad = cond_fn(1.0)
    assert grad.shape == x.shape

    @jax.jit
    def log_p_jit(x_):  # [B]: log p(y_i | x_i, t_i)
        return classifier_log_prob(apply, params, x_, t, y)

    def log_p(x_):
        return np.asarray(log_p_jit(x_), np.float64)

    # Central differences along a random direction per example (float32: eps = 1e-2 keeps the
    # rounding error ~1e-5 / 1e-2 well under the 2% tolerance, the curvature error is O(eps^2)).
    v = jax.random.normal(jax.random.key(3), x.shape)
    eps = 1e-2
    fd = (log_p(x + eps * v) - log_p(x - eps * v)) / (2 * eps)  # [B]
    analytic = np.asarray(jnp.sum(grad * v, axis=(1, 2, 3)))  # [B]
    assert np.all(np.abs(analytic) > 1e-3)  # a non-trivial comparison
    np.testing.assert_allclose(analytic, fd, rtol=2e-2, atol=1e-4)

    scaled = cond_fn(2.5)
    np.testing.assert_allclose(scaled, 2.5 * grad, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("classifier")
    config, workdir = cli.flags.parse_train_flags(
        ["--config", CONFIG, "--workdir", str(workdir), *TRAIN_OVERRIDES]
    )
    state = classifier_train.train_classifier(config, workdir)
    return config, Path(workdir), jax.device_get(state)


def test_training_lowers_the_loss_and_beats_chance_on_clean_held_out_digits(trained):
    config, workdir, state = trained
    assert int(state.step) == TRAIN_STEPS and int(state.skipped) == 0
    logs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in logs if "loss" in m]  # each the mean of 10 steps
    # Chance is log(10) = 2.30; the run drops ~0.1 (2.32 -> 2.22), and 0.05 is several standard
    # errors of a 20-step mean (random t makes each step's loss noisy).
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.05, losses

    module, params = runs.load_classifier(workdir)
    d = config.diffusion
    acc = classifier_train.evaluate_classifier(
        make_classifier_apply_fn(module),
        params,
        schedules.make_schedule(d.beta_schedule, d.num_timesteps),
        config.data,
        timesteps=(0, 50),
    )
    # 100 steps reach ~0.8 on the 185 clean test digits (0.53 at t=50; chance 0.1); 0.4 leaves
    # room for other platforms' numerics while still failing a classifier that ignores its input.
    assert acc["accuracy_t0"] > 0.4, acc
    assert acc["accuracy_t0"] >= acc["accuracy_t50"]  # noise can only hide the class


def test_load_classifier_round_trips_the_trained_params(trained):
    config, workdir, state = trained
    for ema, expected in ((False, state.params), (True, state.ema_params)):
        module, params = runs.load_classifier(workdir, ema=ema)
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), expected)
    assert module.num_classes == 10 and tuple(module.ch_mult) == (1,)
    # EMA (decay 0.9) and raw parameters are different leaves of the checkpoint.
    assert not np.array_equal(
        state.params["dense_out"]["kernel"], state.ema_params["dense_out"]["kernel"]
    )

    with pytest.raises(ValueError, match="another noise schedule"):
        runs.load_classifier(workdir, diffusion_config=configs.get_config(CONFIG).diffusion)
    runs.load_classifier(workdir, diffusion_config=config.diffusion)  # same: fine


def test_load_classifier_names_the_command_when_there_is_no_checkpoint(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="train-classifier"):
        runs.load_classifier(tmp_path)


# ----------------------------------------------------------------------------- config and CLI


def test_digits_classifier_uses_the_digits_models_schedule():
    model, clf = (
        configs.get_config("digits"),
        configs.get_config(CONFIG),
    )
    for key in ("beta_schedule", "num_timesteps"):
        assert clf.diffusion[key] == model.diffusion[key], key
    assert clf.data.use_labels and clf.data.dataset == model.data.dataset


def test_training_without_labels_fails_before_any_work(tmp_path):
    config, workdir = cli.flags.parse_train_flags(
        ["--config", CONFIG, "--workdir", str(tmp_path), "--config.data.use_labels=False"]
    )
    with pytest.raises(ValueError, match="use_labels"):
        classifier_train.train_classifier(config, workdir)


def test_cli_lists_and_dispatches_train_classifier(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "  train-classifier  train a noise-aware classifier" in out
    assert cli.main(["train-classifier", "--config", CONFIG]) == 2
    assert "needs --config FILE and --workdir DIR" in capsys.readouterr().err
