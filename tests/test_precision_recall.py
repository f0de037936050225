"""Improved precision and recall against a brute-force reference."""

import numpy as np
import pytest

from diffusion_jax.evaluation.precision_recall import precision_recall


def _brute_precision_recall(real, fake, k):
    def radii(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        return np.sort(d, 1)[:, k - 1]

    d_fr = np.sqrt(((fake[:, None] - real[None]) ** 2).sum(-1))  # [M, N]
    precision = np.mean(np.any(d_fr <= radii(real)[None], 1))
    recall = np.mean(np.any(d_fr.T <= radii(fake)[None], 1))
    return precision, recall


def test_precision_recall_matches_brute_force_and_batching_is_invisible():
    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(60, 3)), rng.normal(size=(45, 3)) * 1.5 + 0.5
    expected = _brute_precision_recall(real, fake, 3)
    assert 0.1 < expected[0] < 0.95 and 0.1 < expected[1] < 1.0  # a case where both matter
    for batch_size in (7, 1000):
        assert precision_recall(real, fake, k=3, batch_size=batch_size) == expected
    assert precision_recall(real, fake, k=1) == _brute_precision_recall(real, fake, 1)


def test_precision_recall_extremes_and_mode_dropping():
    rng = np.random.default_rng(13)
    real = rng.normal(size=(200, 5))
    assert precision_recall(real, real.copy(), batch_size=64) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # Four tight, far-apart modes; the fake set covers two of them as densely as the real set.
    centres = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    real = centres[np.arange(2000) % 4] + rng.normal(size=(2000, 2))
    fake = centres[np.arange(1000) % 2] + rng.normal(size=(1000, 2))
    precision, recall = precision_recall(real, fake, batch_size=512)
    assert precision > 0.95 and recall == pytest.approx(0.5, abs=0.03)
    full = centres[np.arange(1000) % 4] + rng.normal(size=(1000, 2))
    assert min(precision_recall(real, full, batch_size=512)) > 0.95


def test_precision_recall_errors():
    with pytest.raises(ValueError, match="k must"):
        precision_recall(np.zeros((3, 2)), np.zeros((5, 2)), k=3)
    with pytest.raises(ValueError, match="same feature extractor"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
