"""Evaluation of runs: the dataset bound in bits/dim, feature references, sample metrics and the
`evaluate` / `ref-stats` commands, on the bundled digits with tiny networks."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from diffusion_jax import cli, configs, setup
from diffusion_jax.configs import base_config
from diffusion_jax.core import losses, schedules
from diffusion_jax.evaluation import bpd, evaluate, features
from diffusion_jax.sampling import generate
from diffusion_jax.sampling.runs import Run
from diffusion_jax.training import classifier as classifier_train
from diffusion_jax.training import hooks

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny"
FEATURES = "digits_features"


def _digits(split: str, n: int = 0) -> tuple[np.ndarray, np.ndarray]:
    config = base_config().data
    config.use_labels = True
    batches = list(features.dataset_images(config, split=split, max_images=n))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


# ----------------------------------------------------------------------------- bits/dim


@pytest.fixture(scope="module")
def tiny_run():
    config = configs.get_config(TINY)
    config.diffusion.num_timesteps = 20  # the bound scans all T steps
    parts = setup.diffusion_parts(config)
    params = jax.jit(parts.init_params)(jax.random.key(1))
    return Run(config, parts.apply_fn, params, (8, 8, 1), 0, True)


def test_dataset_bpd_equals_calc_bpd_loop_averaged_over_the_data(tiny_run):
    # Per-example noise keys: batches of 8 (the last one padded) give what one batch of 21 gives.
    n = 21
    result = bpd.dataset_bpd(tiny_run, split="test", batch_size=8, max_examples=n, seed=3)
    assert result["num_examples"] == n

    x0 = _digits("test", n)[0].astype(np.float32) / 127.5 - 1.0
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(np.arange(n))
    d = tiny_run.config.diffusion
    sched = schedules.make_schedule(d.beta_schedule, d.num_timesteps)
    ref = losses.calc_bpd_loop(
        tiny_run.apply_fn,
        tiny_run.params,
        sched,
        x0,
        keys,
        mean_type=d.mean_type,
        var_type=d.var_type,
    )
    np.testing.assert_allclose(result["bpd"], float(np.mean(ref["total_bpd"])), rtol=1e-5)
    np.testing.assert_allclose(result["prior_bpd"], float(np.mean(ref["prior_bpd"])), rtol=1e-5)
    np.testing.assert_allclose(result["decoder_bpd"], float(np.mean(ref["vb"][:, 0])), rtol=1e-5)
    # The bound is the sum of its terms, and an untrained model is far from a good one.
    total = result["prior_bpd"] + result["decoder_bpd"] + result["vb_bpd"]
    np.testing.assert_allclose(result["bpd"], total, rtol=1e-5)
    assert result["bpd"] > 1.0


# ----------------------------------------------------------------------------- digits features


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("features")
    overrides = [
        "--config.classifier.ch=32",
        "--config.classifier.ch_mult=(1,)",
        "--config.classifier.attn_resolutions=()",
        "--config.training.num_steps=300",
        "--config.training.ema_decay=0.0",  # the EMA of 300 steps is still mostly the init
        "--config.optim.warmup_steps=10",
        "--config.training.batch_size=32",
        "--config.training.eval_every=0",
        "--config.training.checkpoint_every=300",
        "--config.training.log_every=40",
        "--config.training.async_checkpoints=False",
    ]
    config, workdir = cli.flags.parse_train_flags(
        ["--config", FEATURES, "--workdir", str(workdir), *overrides]
    )
    classifier_train.train_classifier(config, workdir)
    return Path(workdir)


def test_classifier_features_are_the_pooled_layer_and_recognise_clean_digits(feature_run):
    extractor = features.get_extractor("classifier", workdir=feature_run, batch_size=64)
    assert extractor.feature_dim == 32 and extractor.num_logits == 10
    images, labels = _digits("test")
    feats, logits = extractor(images)
    assert feats.shape == (185, 32) and logits.shape == (185, 10)
    # Trained on t = 0 only, 300 steps recognise clean held-out digits (~0.97; chance: 0.1).
    assert np.mean(np.argmax(logits, -1) == labels) > 0.8
    # Batching and padding do not change the features.
    feats_b, _ = features.get_extractor("classifier", workdir=feature_run, batch_size=24)(images)
    np.testing.assert_allclose(feats, feats_b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        extractor(np.zeros((2, 16, 16, 1), np.uint8))


def test_digit_metrics_tell_real_digits_from_scrambled_ones(feature_run):
    extractor = features.get_extractor("classifier", workdir=feature_run)
    data_config = base_config().data
    ref = evaluate.reference_statistics(extractor, data_config=data_config, split="test")
    assert ref.num_images == 185 and ref.features.shape == (185, 32)
    assert ref.extractor == extractor.name

    train_images, train_labels = _digits("train", 500)
    real = evaluate.sample_metrics(
        train_images, extractor, ref, labels=train_labels, kid_subset_size=185
    )
    rng = np.random.default_rng(0)
    flat = train_images.reshape(len(train_images), -1)
    scrambled = np.stack([rng.permutation(row) for row in flat]).reshape(train_images.shape)
    fake = evaluate.sample_metrics(scrambled, extractor, ref, kid_subset_size=185)
    # Held-out and training digits are the same distribution; scrambled pixels are not.
    assert real["fid"] < 0.25 * fake["fid"], (real, fake)
    assert abs(real["kid"]) < 3 * real["kid_std"] + 1e-3 < fake["kid"], (real, fake)
    assert real["precision"] > 0.7 and real["recall"] > 0.6, real
    assert fake["precision"] < 0.5 * real["precision"] and fake["recall"] < 0.5 * real["recall"]
    assert real["class_accuracy"] > 0.8 and real["is"] > fake["is"], (real, fake)


def test_reference_files_round_trip_and_guard_against_other_features(feature_run, tmp_path):
    extractor = features.get_extractor("classifier", workdir=feature_run)
    images = _digits("test", 50)[0]
    ref = evaluate.reference_statistics(extractor, images=images)
    path = evaluate.save_reference(tmp_path / "ref.npz", ref)
    back = evaluate.load_reference(path)
    np.testing.assert_array_equal(back.mu, ref.mu)
    np.testing.assert_array_equal(back.sigma, ref.sigma)
    np.testing.assert_array_equal(back.features, ref.features)
    assert (back.extractor, back.num_images) == (extractor.name, 50)

    other = evaluate.Reference(ref.mu, ref.sigma, None, "inception-fid", 50, "published")
    with pytest.raises(ValueError, match="same feature extractor"):
        evaluate.sample_metrics(images, extractor, other)
    stats_only = evaluate.Reference(ref.mu, ref.sigma, None, extractor.name, 50, "stats.npz")
    with pytest.raises(ValueError, match="KID compares sets of features"):
        evaluate.sample_metrics(images, extractor, stats_only, metrics_to_compute=("kid",))
    fid_only = evaluate.sample_metrics(images, extractor, stats_only, metrics_to_compute=("fid",))
    assert abs(fid_only["fid"]) < 1e-6  # the same images as the reference


# ----------------------------------------------------------------------------- the commands


def test_ref_stats_and_evaluate_commands(feature_run, tmp_path, capsys):
    ref_path = tmp_path / "digits_test.npz"
    argv = ["ref-stats", "--dataset", "digits", "--split", "test", "--out", str(ref_path)]
    argv += ["--features", "classifier", "--feature_workdir", str(feature_run)]
    assert cli.main(argv) == 0
    assert "185 images" in capsys.readouterr().out

    samples = tmp_path / "samples.npz"
    images, labels = _digits("train", 200)
    generate.save_samples(images, labels, samples)
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--samples", str(samples), "--reference", str(ref_path)]
    argv += ["--features", "classifier", "--feature_workdir", str(feature_run), "--out", str(out)]
    assert cli.main(argv) == 0
    scores = json.loads(out.read_text())["samples"]
    direct = evaluate.sample_metrics(
        images,
        features.get_extractor("classifier", workdir=feature_run),
        evaluate.load_reference(ref_path),
        labels=labels,
    )
    for key in ("fid", "kid", "precision", "recall", "is", "class_accuracy"):
        assert scores[key] == pytest.approx(direct[key], rel=1e-6), key


def test_evaluate_explains_what_it_needs(capsys):
    assert cli.main(["evaluate"]) == 2
    assert "needs something to evaluate" in capsys.readouterr().err
    assert cli.main(["evaluate", "--bpd"]) == 2
    assert "need the run's --workdir" in capsys.readouterr().err
    assert cli.main(["evaluate", "--samples", "x.npz", "--features", "classifier"]) == 2
    assert "feature_workdir" in capsys.readouterr().err


def test_training_eval_hook_logs_bpd_and_sample_metrics(tiny_run, feature_run, tmp_path):
    config = tiny_run.config.copy_and_resolve_references()
    config.eval.update(bpd_examples=10, num_samples=32, sampler="ddim", steps=2, batch_size=16)
    config.eval.update(features="classifier", feature_workdir=str(feature_run))
    parts = dataclasses.replace(setup.diffusion_parts(config), apply_fn=tiny_run.apply_fn)
    eval_fn = hooks.make_eval_fn(parts, tmp_path)
    state = types.SimpleNamespace(ema_params=tiny_run.params)
    first = eval_fn(state, 5)
    name = features.get_extractor("classifier", workdir=feature_run).name.replace(":", "_")
    ref_file = tmp_path / "eval" / f"reference_{name}.npz"
    assert ref_file.exists()  # the held-out reference, computed once and cached
    expected_bpd = bpd.dataset_bpd(tiny_run, max_examples=10, batch_size=16)["bpd"]
    assert first["bpd"] == pytest.approx(expected_bpd, rel=1e-6)
    assert {"fid", "kid", "precision", "recall", "is"} <= set(first)
    # An untrained denoiser's 2-step samples are far from digits.
    assert first["fid"] > 0 and first["precision"] < 0.5
    mtime = ref_file.stat().st_mtime
    again = eval_fn(state, 5)
    assert again == first and ref_file.stat().st_mtime == mtime
    logged = [json.loads(line) for line in (tmp_path / "eval" / "train_eval.jsonl").open()]
    assert [e["step"] for e in logged] == [5, 5]

    config.eval.update(bpd_examples=0, num_samples=0)
    parts = dataclasses.replace(parts, config=config)
    assert hooks.make_eval_fn(parts, tmp_path) is None
