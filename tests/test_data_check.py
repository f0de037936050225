"""Tests of diffusion_jax.data.check (folders checked up front), its use by the training pipeline,
and the `check-data` command, on folders of PNG/JPEG files written here."""

import logging

import numpy as np
import pytest
from PIL import Image

from diffusion_jax.cli import check_data
from diffusion_jax.cli.flags import UsageError
from diffusion_jax.configs import base_config
from diffusion_jax.data import check
from diffusion_jax.data import pipeline as data
from diffusion_jax.data.sources import ImageFolderSource
from diffusion_jax.errors import UserError

GOOD = {  # file -> (height, width); image_size 12 makes small.png the one small image
    "cats/a.png": (16, 16),
    "cats/b.jpg": (20, 24),
    "cats/sub/c.png": (16, 18),
    "dogs/d.png": (17, 16),
    "dogs/edge.png": (12, 14),  # only cropped
    "dogs/small.png": (6, 10),
}
BAD = ("birds/text.png", "dogs/truncated.jpg")  # leaving them out empties the class "birds"
IMAGE_SIZE = 12


def _write(root, name, size, seed):
    noise = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise).save(path)
    return path


@pytest.fixture
def good_folder(tmp_path):
    root = tmp_path / "good"
    for seed, (name, size) in enumerate(GOOD.items()):
        _write(root, name, size, seed)
    return root


@pytest.fixture
def bad_folder(good_folder):
    (good_folder / "birds").mkdir()
    (good_folder / BAD[0]).write_text("not an image")
    jpeg = _write(good_folder, BAD[1], (32, 32), seed=9).read_bytes()
    (good_folder / BAD[1]).write_bytes(jpeg[: len(jpeg) // 2])
    return good_folder


def _config(folder, **overrides):
    config = base_config().data
    config.update(
        {"dataset": "folder", "folder": str(folder), "image_size": IMAGE_SIZE} | overrides
    )
    return config


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def checks(monkeypatch) -> list[str]:
    """The folders `check.check_files` is called on, in order."""
    calls, real = [], check.check_files
    monkeypatch.setattr(
        check, "check_files", lambda root, *a, **k: [calls.append(root), real(root, *a, **k)][1]
    )
    return calls


def test_report_lists_exactly_the_bad_and_the_small_files(bad_folder):
    report = check.check_folder(bad_folder, image_size=IMAGE_SIZE, workers=3, progress=False)
    assert report.num_files == 8
    assert [name for name, _ in report.unreadable] == list(BAD)
    reasons = dict(report.unreadable)
    assert "cannot identify" in reasons["birds/text.png"]
    assert "truncated" in reasons["dogs/truncated.jpg"].lower()
    assert report.small == (("dogs/small.png", (6, 10)),)
    assert report.min_size == (6, 10) and report.max_size == (20, 24)
    assert check.check_folder(bad_folder, image_size=IMAGE_SIZE, workers=1, progress=False) == (
        report
    )
    text = check.format_report(report)
    assert "8 image files" in text and "6 decode, 2 do not" in text
    assert "Heights 6..20, widths 10..24" in text
    assert all(name in text for name in (*BAD, "dogs/small.png  6x10"))
    assert "cats/a.png" not in text


def test_report_without_a_target_size_and_the_progress_bar(good_folder, capsys):
    report = check.check_folder(good_folder, progress=True)
    assert report.small == () and report.unreadable == () and report.num_files == 6
    assert "checking images" in capsys.readouterr().err
    check.check_folder(good_folder, progress=False)
    assert capsys.readouterr().err == ""


def test_training_data_refuses_unreadable_files(bad_folder):
    config = _config(bad_folder)
    with pytest.raises(data.ImageDecodeError, match="truncated.jpg") as raised:
        data.dataset_info(config)
    message = str(raised.value)
    assert "2 of 8 image files" in message and "text.png" in message
    assert "data.skip_unreadable=True" in message and "small.png" not in message
    assert isinstance(raised.value, UserError)
    with pytest.raises(data.ImageDecodeError, match="truncated.jpg"):  # before the first batch
        data.make_train_iterator(
            config, global_batch_size=2, seed=0, process_index=0, process_count=1
        )


def test_skip_unreadable_leaves_them_out_and_trains(bad_folder, caplog, checks):
    config = _config(bad_folder, skip_unreadable=True, use_labels=True)
    with caplog.at_level(logging.WARNING):
        info = data.dataset_info(config)
        source = data.open_source(config)
        it = data.make_train_iterator(
            config, global_batch_size=2, seed=0, process_index=0, process_count=1
        )
        batches = [next(it) for _ in range(7)]  # 14 examples: more than two epochs of 6
    assert checks == [str(bad_folder)]  # once per process, not per call or epoch
    assert info.num_examples() == 6 and info.num_classes == 3  # "birds" keeps its label
    assert source.files == sorted(GOOD)
    everything = ImageFolderSource(bad_folder)
    labels = dict(zip(everything.files, everything.labels, strict=True))
    assert source.labels == [labels[f] for f in source.files] == [1, 1, 1, 2, 2, 2]
    assert all(b["image"].shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3) for b in batches)
    left_out = [m for m in _warnings(caplog) if m.startswith("Left out")]
    assert len(left_out) == 1 and "2 of 8" in left_out[0] and BAD[1] in left_out[0]


def test_small_images_are_reported_before_training(good_folder, caplog):
    with caplog.at_level(logging.WARNING):
        assert data.dataset_info(_config(good_folder)).num_examples() == 6
    (warning,) = _warnings(caplog)
    assert "1 of 6 images" in warning and "smaller than data.image_size=12" in warning
    assert "6x10" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        data.dataset_info(_config(good_folder, image_size=6))
    assert _warnings(caplog) == []


def test_a_changed_file_list_is_checked_again(good_folder, checks):
    config = _config(good_folder)
    data.dataset_info(config)
    data.dataset_info(config)
    assert len(checks) == 1
    (good_folder / "dogs" / "text.png").write_text("not an image")
    with pytest.raises(data.ImageDecodeError, match="dogs/text.png"):
        data.dataset_info(config)
    assert len(checks) == 2


def test_empty_and_all_unreadable_folders(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(data.DatasetNotFoundError, match="contains no"):
        check.check_folder(tmp_path / "empty")
    with pytest.raises(data.DatasetNotFoundError, match="contains no"):
        data.dataset_info(_config(tmp_path / "empty"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_text("not an image")
    with pytest.raises(data.DatasetNotFoundError, match="left out"):
        data.dataset_info(_config(tmp_path / "junk", skip_unreadable=True))
    for error, base in [
        (data.DatasetNotFoundError, FileNotFoundError),
        (data.DataPreparationError, RuntimeError),
        (data.ImageDecodeError, ValueError),
    ]:
        assert issubclass(error, UserError) and issubclass(error, base)


def test_sampling_needs_only_the_folder_shape(tmp_path):
    config = _config(tmp_path / "gone", image_size=8)
    assert data.example_shape(config) == (8, 8, 3)


def test_check_data_command(good_folder, capsys):
    assert check_data.main([str(good_folder), "--image_size", "12", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "6 image files" in out and "dogs/small.png  6x10" in out
    assert "dogs/edge.png" not in out
    (good_folder / "dogs" / "text.png").write_text("not an image")
    with pytest.raises(data.ImageDecodeError, match="1 of 7 image files"):
        check_data.main([str(good_folder)])
    assert "dogs/text.png: UnidentifiedImageError" in capsys.readouterr().out
    with pytest.raises(UsageError, match="workers"):
        check_data.main([str(good_folder), "--workers", "-1"])
