"""Tests of diffusion_jax.data (pipeline, sources), offline: digits, toy2d, folders."""

import sys
import time

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from diffusion_jax.configs import base_config
from diffusion_jax.data import pipeline as data
from diffusion_jax.data import sources as data_sources


def _config(**overrides) -> ml_collections.ConfigDict:
    config = base_config().data
    config.update(overrides)
    return config


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def _train(config, **kwargs):
    kwargs = {"global_batch_size": 8, "seed": 0, "process_index": 0, "process_count": 1} | kwargs
    return data.make_train_iterator(config, **kwargs)


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_split_is_fixed_stratified_and_disjoint():
    train = data_sources.digits_split_indices("train")
    test = data_sources.digits_split_indices("test")
    assert (len(train), len(test)) == (1612, 185)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(1797))
    np.testing.assert_array_equal(test[:12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 79, 91])  # pinned
    target = load_digits().target
    per_class = np.bincount(target, minlength=10)
    np.testing.assert_array_equal(np.bincount(target[test]), -(-per_class // 10))  # ceil(n / 10)
    info = data.dataset_info(_config())
    assert (info.num_examples("train"), info.num_examples("test")) == (1612, 185)
    assert info.shape == (8, 8, 1) and info.num_classes == 10 and info.eval_split == "test"


def test_digits_source_matches_sklearn():
    digits = load_digits()
    source = data_sources.DigitsSource("test")
    idx = data_sources.digits_split_indices("test")
    for i in (0, 7, 184):
        item = source[i]
        assert item["image"].dtype == np.uint8 and item["image"].shape == (8, 8, 1)
        expected = np.round(digits.images[idx[i]] * 255 / 16).astype(np.uint8)
        np.testing.assert_array_equal(item["image"][..., 0], expected)
        assert item["label"] == digits.target[idx[i]]


def test_eval_iterator_is_one_ordered_pass_with_sklearn_labels():
    digits = load_digits()
    idx = data_sources.digits_split_indices("test")
    batches = list(data.make_eval_iterator(_config(use_labels=True), batch_size=64))
    assert [len(b["label"]) for b in batches] == [64, 64, 57]
    images = np.concatenate([b["image"] for b in batches])  # [185, 8, 8, 1]
    labels = np.concatenate([b["label"] for b in batches])
    assert images.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, digits.target[idx])
    expected = np.round(digits.images[idx] * 255 / 16) / 127.5 - 1.0
    np.testing.assert_allclose(images[..., 0], expected, atol=1e-6)


def test_train_batches_shape_range_and_labels():
    config = _config(use_labels=True)
    batches = _take(_train(config, global_batch_size=32), 4)
    source = data_sources.DigitsSource("train")
    labels_of = {}
    for item in (source[i] for i in range(len(source))):
        labels_of.setdefault(item["image"].tobytes(), set()).add(item["label"])
    for batch in batches:
        assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
        assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
        uint8 = np.round((batch["image"] + 1) * 127.5).astype(np.uint8)
        for image, label in zip(uint8, batch["label"], strict=True):
            assert label in labels_of[image.tobytes()]  # the image and label of one example


def test_image_size_resizes_digits():
    batch = next(_train(_config(image_size=16)))
    assert batch["image"].shape == (8, 16, 16, 1) and "label" not in batch
    assert data.dataset_info(_config(image_size=16)).shape == (16, 16, 1)


# ---------------------------------------------------------------------------------------------
# determinism, sharding, checkpointing


def test_same_seed_same_batches_different_seed_different():
    config = _config(use_labels=True, random_flip=True)
    _assert_same_batches(_take(_train(config, seed=3), 3), _take(_train(config, seed=3), 3))
    a, b = next(_train(config, seed=3)), next(_train(config, seed=4))
    assert not np.array_equal(a["image"], b["image"])


@pytest.fixture
def distinct_folder(tmp_path):
    """12 PNGs whose constant colour (10 * i) identifies them; 4x4, so no resizing happens."""
    for i in range(12):
        pixels = np.full((4, 4, 3), 10 * i, np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"img{i:02d}.png")
    return tmp_path


def _ids(batches):
    images = np.concatenate([b["image"] for b in batches])  # [N, 4, 4, 3]
    return (np.round((images[:, 0, 0, 0] + 1) * 127.5) / 10).astype(int).tolist()


def test_hosts_read_disjoint_shards_that_cover_each_epoch(distinct_folder):
    config = _config(dataset="folder", folder=str(distinct_folder), image_size=4)
    hosts = [_train(config, global_batch_size=4, process_index=p, process_count=2) for p in (0, 1)]
    host_ids = [_ids(_take(it, 6)) for it in hosts]  # 2 epochs: 6 batches of 2 per host
    for epoch in (0, 1):
        shard0, shard1 = (ids[6 * epoch : 6 * epoch + 6] for ids in host_ids)
        assert set(shard0).isdisjoint(shard1)
        assert sorted(shard0 + shard1) == list(range(12))
    # The global batches do not depend on the number of hosts: host p holds rows [2p, 2p + 2)
    # of each global batch of 4, the rows its devices hold.
    single = _ids(_take(_train(config, global_batch_size=4), 6))
    for b in range(6):
        rows = host_ids[0][2 * b : 2 * b + 2] + host_ids[1][2 * b : 2 * b + 2]
        assert single[4 * b : 4 * b + 4] == rows
    assert single[:12] != single[12:]  # a new shuffle each epoch
    assert single[:12] != list(range(12))


def test_batch_size_must_divide_over_hosts():
    with pytest.raises(ValueError, match="multiple of the number of hosts"):
        _train(_config(), global_batch_size=5, process_count=2)
    with pytest.raises(ValueError, match="non-negative"):
        _train(_config(), seed=-1)
    with pytest.raises(ValueError, match="process_index"):
        _train(_config(), process_index=2, process_count=2)


def test_iterator_state_round_trip():
    config = _config(use_labels=True, random_flip=True)
    it = _train(config)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 3)
    fresh = _train(config)
    fresh.set_state(state)
    _assert_same_batches(_take(fresh, 3), expected)


def test_iterator_state_round_trip_through_orbax(tmp_path):
    config = _config(random_flip=True)
    it = _train(config)
    _take(it, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    expected = _take(it, 2)
    fresh = _train(config)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        assert manager.latest_step() == 5
        restored = manager.restore(
            5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
        )
    assert restored["data"] is fresh
    _assert_same_batches(_take(fresh, 2), expected)


def test_random_flip_mirrors_some_images_deterministically():
    plain = next(_train(_config(), global_batch_size=64))["image"]
    flipped = next(_train(_config(random_flip=True), global_batch_size=64))["image"]
    again = next(_train(_config(random_flip=True), global_batch_size=64))["image"]
    np.testing.assert_array_equal(flipped, again)
    pairs = list(zip(flipped, plain, strict=True))
    mirrored = np.array([np.array_equal(f, p[:, ::-1]) for f, p in pairs])  # [64]
    same = np.array([np.array_equal(f, p) for f, p in pairs])
    assert np.all(mirrored | same)  # the same examples, each either kept or mirrored
    assert np.any(mirrored & ~same) and np.any(same & ~mirrored)


@pytest.mark.skipif(sys.platform != "linux", reason="spawned worker start-up is slow elsewhere")
def test_worker_processes_give_the_same_batches():
    expected = _take(_train(_config(use_labels=True)), 2)
    it = _train(_config(use_labels=True, num_workers=1))
    try:
        _assert_same_batches(_take(it, 2), expected)
    finally:
        it.close()


# ---------------------------------------------------------------------------------------------
# image folders


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "images"
    (root / "dogs").mkdir(parents=True)
    (root / "cats" / "nested").mkdir(parents=True)
    wide = np.zeros((12, 20, 3), np.uint8)
    wide[:, 4:16] = 255  # the centre square is white, the side bands black
    Image.fromarray(wide).save(root / "cats" / "wide.png")
    Image.fromarray(np.full((15, 9), 200, np.uint8)).save(root / "cats" / "nested" / "tall.png")
    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(root / "dogs" / "a.jpg")
    Image.fromarray(np.full((10, 10, 3), 50, np.uint8)).save(root / "dogs" / "b.JPEG")
    return root


def test_image_folder_crops_resizes_and_labels(class_folder):
    config = _config(dataset="folder", folder=str(class_folder), image_size=8, use_labels=True)
    info = data.dataset_info(config)
    assert info.shape == (8, 8, 3) and info.num_classes == 2 and info.num_examples() == 4
    source = data.open_source(config)
    assert source.classes == ["cats", "dogs"]
    assert [source.files[i].split("/")[-1] for i in range(4)] == [
        "tall.png",
        "wide.png",
        "a.jpg",
        "b.JPEG",
    ]
    batch = next(data.make_eval_iterator(config, batch_size=4))
    assert batch["image"].shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(batch["label"], [0, 0, 1, 1])
    np.testing.assert_allclose(batch["image"][0], 200 / 127.5 - 1, atol=1e-6)  # grey -> RGB
    np.testing.assert_allclose(batch["image"][1], 1.0, atol=0.02)  # only the white centre kept
    np.testing.assert_allclose(batch["image"][2], 100 / 127.5 - 1, atol=0.05)  # JPEG is lossy


def test_image_folder_errors(class_folder, tmp_path):
    (class_folder / "dogs" / "broken.png").write_bytes(b"not a png")
    config = _config(dataset="folder", folder=str(class_folder), image_size=8)
    with pytest.raises(data.ImageDecodeError, match="broken.png"):
        list(data.make_eval_iterator(config, batch_size=2))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(data.DatasetNotFoundError, match="contains no"):
        data.dataset_info(_config(dataset="folder", folder=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="image_size"):
        data.dataset_info(_config(dataset="folder", folder=str(class_folder)))


def test_flat_folder_is_unlabelled(distinct_folder):
    config = _config(dataset="folder", folder=str(distinct_folder), image_size=4)
    assert data.dataset_info(config).num_classes == 0
    config.use_labels = True
    with pytest.raises(ValueError, match="no labels"):
        _train(config)


# ---------------------------------------------------------------------------------------------
# TFDS


@pytest.mark.parametrize("name", ["cifar10", "celeb_a_hq"])
def test_tfds_not_prepared_fails_fast_and_says_what_to_run(name, tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DatasetNotFoundError) as error:
        _train(_config(dataset=name, data_dir=str(tmp_path)))
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert f"diffusion-jax prepare-data {name} --data_dir {tmp_path}" in message
    assert str(tmp_path) in message.split("\n")[0]  # the directory searched
    if name == "celeb_a_hq":
        assert str(tmp_path / "downloads" / "manual") in message
    assert "tensorflow" not in sys.modules


def test_prepare_data_offline_errors(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    real_find_spec = data_sources.importlib.util.find_spec
    monkeypatch.setattr(
        data_sources.importlib.util,
        "find_spec",
        lambda name: None if name == "tensorflow" else real_find_spec(name),
    )
    with pytest.raises(data.DataPreparationError, match="needs tensorflow"):
        data.prepare_data("mnist", str(tmp_path))
    with pytest.raises(ValueError, match="need no preparation"):
        data.prepare_data("digits", str(tmp_path))

    # With TensorFlow "installed", the manual files and then the download are what fail here.
    monkeypatch.setattr(data_sources.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(data.DataPreparationError, match="downloads/manual"):
        data.prepare_data("celeb_a_hq", str(tmp_path))

    def offline(self, **kwargs):
        assert kwargs["file_format"] == "array_record"
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(data.DataPreparationError, match="network unreachable"):
        data.prepare_data("mnist", str(tmp_path))


def test_tfds_source_reads_array_record_without_tensorflow(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.core.registered.skip_registration():

        class TinyImages(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                features = {
                    "image": tfds.features.Image(shape=(6, 6, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
                features = tfds.features.FeaturesDict(features)
                return tfds.core.DatasetInfo(builder=self, features=features)

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(5)}

            def _generate_examples(self, n):
                for i in range(n):  # PIL images: TFDS encodes those without TensorFlow
                    image = Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8))
                    yield i, {"image": image, "label": i % 3}

    builder = TinyImages(data_dir=str(tmp_path))
    builder.download_and_prepare(file_format="array_record")
    source = data_sources.TfdsSource(builder, "train")
    items = sorted((source[i] for i in range(len(source))), key=lambda x: x["image"][0, 0, 0])
    assert [item["label"] for item in items] == [0, 1, 2, 0, 1]
    assert all(item["image"].shape == (6, 6, 3) for item in items)
    assert items[4]["image"].dtype == np.uint8 and items[4]["image"][0, 0, 0] == 160
    with pytest.raises(ValueError, match="no split 'test'"):
        data_sources.TfdsSource(builder, "test")
    assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------------------------------------
# toy2d and configuration errors


def test_toy2d_mixture():
    points = data.sample_toy2d(np.random.default_rng(0), 20_000)  # [20000, 2]
    assert points.shape == (20_000, 2) and points.dtype == np.float32
    assert np.all(np.abs(points) <= 1)
    np.testing.assert_allclose(points.mean(0), 0.0, atol=0.015)  # std of the mean ~0.0035
    radius = np.linalg.norm(points, axis=1)
    assert abs(radius.mean() - 0.7) < 0.01 and radius.std() < 0.07
    angle = np.mod(np.arctan2(points[:, 1], points[:, 0]), 2 * np.pi)
    counts = np.bincount(np.round(angle / (np.pi / 4)).astype(int) % 8, minlength=8)
    assert counts.min() > 20_000 / 8 * 0.9  # all 8 modes, about equally often

    source = data_sources.Toy2dSource("train")
    assert len(source) == 100_000
    np.testing.assert_array_equal(source[123]["image"], data_sources.Toy2dSource()[123]["image"])
    assert not np.array_equal(source[123]["image"], data_sources.Toy2dSource("test")[123]["image"])
    item = source[7]
    mode_angle = 2 * np.pi * item["label"] / 8
    centre = 0.7 * np.array([np.cos(mode_angle), np.sin(mode_angle)])
    assert np.linalg.norm(item["image"] - centre) < 0.3  # the label is the point's component

    batch = next(_train(_config(dataset="toy2d", use_labels=True)))
    assert batch["image"].shape == (8, 2) and batch["label"].shape == (8,)
    assert data.dataset_info(_config(dataset="toy2d")).shape == (2,)
    with pytest.raises(ValueError, match="random_flip"):
        _train(_config(dataset="toy2d", random_flip=True))


def test_unknown_dataset_suggests_names():
    with pytest.raises(ValueError, match="cifar10"):
        data.dataset_info(_config(dataset="cifar"))
