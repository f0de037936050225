import numpy as np
import pytest
import scipy.linalg

from diffusion_jax.evaluation import metrics


def _random_spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.geomspace(1.0, cond, d)) @ q.T


def _sqrtm_fid(mu1, s1, mu2, s2, eps=1e-6):
    """The textbook formula with scipy's sqrtm and the eps-offset fallback for singular products."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(len(s1)) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean))


# ----------------------------------------------------------------------------- statistics


def test_statistics_match_numpy_and_streaming_matches_one_shot():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12)).astype(np.float32) * 3 + 1
    mu, sigma = metrics.feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)
    acc = metrics.StatsAccumulator()
    for lo, hi in [(0, 1), (1, 130), (130, 131), (131, 500)]:  # uneven, including 1-row batches
        acc.update(x[lo:hi])
    mu_s, sigma_s = acc.result()
    assert acc.num_samples == 500
    np.testing.assert_allclose(mu_s, mu, rtol=1e-12)
    np.testing.assert_allclose(sigma_s, sigma, rtol=1e-10, atol=1e-12)


def test_streaming_covariance_survives_a_large_offset():
    # Accumulating sum(x x^T) - n mu mu^T would lose every digit here (offset^2 / var = 1e16).
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 4)) + 1e8
    acc = metrics.StatsAccumulator()
    for batch in np.array_split(x, 7):
        acc.update(batch)
    np.testing.assert_allclose(acc.result()[1], np.cov(x, rowvar=False), rtol=1e-6, atol=1e-6)


def test_statistics_errors():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.StatsAccumulator().result()
    acc = metrics.StatsAccumulator()
    acc.update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="same feature extractor"):
        acc.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.feature_statistics(np.full((3, 2), np.nan))


# ----------------------------------------------------------------------------- FID


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(2).normal(size=(1000, 32)) * 5
    mu, sigma = metrics.feature_statistics(x)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) < 1e-6


def test_fid_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 4, 10), rng.uniform(0.1, 4, 10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    fid = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert fid == pytest.approx(expected, rel=1e-12)


def test_fid_matches_sqrtm_formula_on_well_conditioned_stats():
    rng = np.random.default_rng(4)
    for d in (2, 16, 64):
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d, cond=100.0)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        expected = _sqrtm_fid(mu1, s1, mu2, s2)
        assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
        # Not symmetric in a trivial way: the second statistics enter through sqrt(s1) s2 sqrt(s1).
        assert metrics.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-6)


def test_fid_is_finite_and_exact_for_rank_deficient_covariances():
    # N < D: both covariances are singular. With sigma_i = A_i^T A_i (A_i the centred features
    # over sqrt(N - 1)), tr((sigma1 sigma2)^{1/2}) is the nuclear norm of the small A1 A2^T.
    rng = np.random.default_rng(5)
    x1, x2 = rng.normal(size=(10, 64)), rng.normal(size=(12, 64)) + 0.1
    (mu1, s1), (mu2, s2) = metrics.feature_statistics(x1), metrics.feature_statistics(x2)
    a1 = (x1 - x1.mean(0)) / np.sqrt(len(x1) - 1)
    a2 = (x2 - x2.mean(0)) / np.sqrt(len(x2) - 1)
    nuclear = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * nuclear
    fid = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(fid) and fid >= 0
    assert fid == pytest.approx(expected, rel=1e-8)


def test_fid_shape_errors():
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="same feature extractor"):
        metrics.frechet_distance(mu, sigma, np.zeros(8), np.eye(8))
    with pytest.raises(ValueError, match=r"\[D, D\]"):
        metrics.frechet_distance(mu, np.eye(3), mu, sigma)
    with pytest.raises(ValueError, match=r"\[D\] vector"):
        metrics.frechet_distance(sigma, sigma, mu, sigma)


# ----------------------------------------------------------------------------- Inception Score


def test_inception_score_extremes_and_splits():
    k = 10
    same = np.tile(np.random.default_rng(6).normal(size=k), (100, 1))
    assert metrics.inception_score(same, splits=5) == pytest.approx((1.0, 0.0), abs=1e-12)
    one_hot = np.eye(k)[np.arange(200) % k]
    mean, std = metrics.inception_score(one_hot, splits=10, from_logits=False)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    # Near one-hot logits: a margin of 50 nats is one-hot to float64 precision.
    mean, _ = metrics.inception_score(50.0 * one_hot, splits=10)
    assert mean == pytest.approx(k, rel=1e-12)
    # Contiguous splits: 20 rows of class 0 then 20 of class 1. One split sees two classes (IS 2);
    # two splits each see a single class (IS 1).
    two = np.eye(2)[np.repeat([0, 1], 20)]
    assert metrics.inception_score(two, splits=1, from_logits=False)[0] == pytest.approx(2.0)
    assert metrics.inception_score(two, splits=2, from_logits=False) == pytest.approx((1.0, 0.0))
    # Uneven N: chunk i is rows [i N // splits, (i + 1) N // splits), i.e. 3 + 4 rows for N = 7
    # (np.array_split would cut 4 + 3 and mix the classes in the first chunk).
    uneven = np.eye(2)[[0, 0, 0, 1, 1, 1, 1]]
    assert metrics.inception_score(uneven, 2, from_logits=False) == pytest.approx((1.0, 0.0))
    # Two chunks with p(y) = (2/3, 1/3) and (1/3, 2/3): each scores exp(mean(log 3/2, ., log 3)).
    mixed = np.eye(2)[[0, 0, 1, 0, 1, 1]]
    chunk = np.exp(np.mean([np.log(3 / 2), np.log(3 / 2), np.log(3)]))
    mean, std = metrics.inception_score(mixed, splits=2, from_logits=False)
    assert mean == pytest.approx(chunk, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_logits_match_probabilities_and_a_direct_computation():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(90, 6)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for part in np.split(probs, 3):
        py = part.mean(0)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
    expected = (np.mean(scores), np.std(scores))
    assert metrics.inception_score(logits, splits=3) == pytest.approx(expected, rel=1e-10)
    assert metrics.inception_score(probs, 3, from_logits=False) == pytest.approx(expected, 1e-10)
    # Softmax is shift invariant; huge logits must not overflow.
    assert metrics.inception_score(logits + 1e4, splits=3) == pytest.approx(expected, rel=1e-8)


def test_inception_score_errors():
    with pytest.raises(ValueError, match="splits"):
        metrics.inception_score(np.zeros((4, 3)), splits=5)
    with pytest.raises(ValueError, match="probabilities"):
        metrics.inception_score(np.ones((4, 3)), splits=1, from_logits=False)


# ----------------------------------------------------------------------------- KID


def _cubic(a, b):
    return (a @ b.T / a.shape[1] + 1) ** 3


def test_kid_matches_the_unbiased_definition_and_ignores_order():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) + 0.5
    # subset_size clips to min(7, 9) = 7: all of x and 7 of y. Take y[:7] via a 7-row y.
    y = y[:7]
    kxx, kyy, kxy = _cubic(x, x), _cubic(y, y), _cubic(x, y)
    m = 7
    expected = (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )
    mean, std = metrics.kernel_inception_distance(x, y, num_subsets=3)
    assert mean == pytest.approx(expected, rel=1e-12) and std < 1e-12
    shuffled, _ = metrics.kernel_inception_distance(x[::-1], rng.permutation(y), num_subsets=3)
    assert shuffled == pytest.approx(expected, rel=1e-12)


def test_kid_is_unbiased_and_the_biased_estimator_is_not():
    rng = np.random.default_rng(9)
    m, reps = 20, 400
    unbiased, biased = [], []
    for _ in range(reps):
        x, y = rng.normal(size=(m, 4)), rng.normal(size=(m, 4))
        unbiased.append(metrics.kernel_inception_distance(x, y, num_subsets=1, seed=1)[0])
        biased.append(_cubic(x, x).mean() + _cubic(y, y).mean() - 2 * _cubic(x, y).mean())
    se = np.std(unbiased) / np.sqrt(reps)
    assert abs(np.mean(unbiased)) < 3 * se
    assert np.mean(biased) > 10 * np.std(biased) / np.sqrt(reps)


def test_kid_of_different_distributions_is_positive():
    rng = np.random.default_rng(10)
    real, fake = rng.normal(size=(600, 8)), rng.normal(size=(500, 8)) + 0.5
    mean, std = metrics.kernel_inception_distance(real, fake, num_subsets=20, subset_size=100)
    assert mean > 5 * std > 0
    same, _ = metrics.kernel_inception_distance(real, rng.normal(size=(500, 8)), 20, 100)
    assert abs(same) < mean / 10
    with pytest.raises(ValueError, match="same feature extractor"):
        metrics.kernel_inception_distance(real, fake[:, :4])


def test_kid_permutation_test():
    rng = np.random.default_rng(11)
    real = rng.normal(size=(300, 6))
    _, p_same = metrics.kid_permutation_test(real, rng.normal(size=(300, 6)), 99, 150)
    kid, p_diff = metrics.kid_permutation_test(real, rng.normal(size=(300, 6)) + 0.4, 99, 150)
    assert p_same > 0.05 and p_diff == pytest.approx(1 / 100) and kid > 0


# ----------------------------------------------------------------------------- statistics files


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(14)
    mu, sigma = metrics.feature_statistics(rng.normal(size=(50, 6)))
    path = metrics.save_statistics(
        tmp_path / "sub" / "ref", mu, sigma, num_images=50, extractor="toy", split="train"
    )
    assert path.name == "ref.npz"
    mu2, sigma2, meta = metrics.load_statistics(path)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    assert meta == {"num_images": 50, "extractor": "toy", "split": "train"}
    # With the raw features kept (for KID / precision-recall), they come back as stored.
    feats = rng.normal(size=(50, 6)).astype(np.float32)
    mu, sigma = metrics.feature_statistics(feats)
    path = metrics.save_statistics(tmp_path / "with_features.npz", mu, sigma, features=feats)
    mu2, _, meta = metrics.load_statistics(path)
    np.testing.assert_array_equal(meta["features"], feats)
    assert meta["features"].dtype == np.float32 and set(meta) == {"features"}
    with pytest.raises(ValueError, match="same feature extractor"):
        metrics.save_statistics(tmp_path / "x", mu, sigma, features=feats[:, :3])


def test_load_published_formats(tmp_path):
    rng = np.random.default_rng(15)
    feats = rng.normal(size=(40, 5)).astype(np.float32)
    mu, sigma = metrics.feature_statistics(feats)
    # TTUR / clean-fid FID stats: float32 mu and sigma, nothing else.
    np.savez(tmp_path / "fid_stats_cifar10_train.npz", mu=mu.astype(np.float32), sigma=sigma)
    mu2, sigma2, meta = metrics.load_statistics(tmp_path / "fid_stats_cifar10_train.npz")
    assert mu2.dtype == np.float64 and meta == {}
    np.testing.assert_allclose(mu2, mu, rtol=1e-6)
    # guided-diffusion reference batches: images and spatial stats beside mu / sigma.
    np.savez(tmp_path / "ref_batch.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu, sigma=sigma)
    assert metrics.load_statistics(tmp_path / "ref_batch.npz")[2] == {}
    # Raw features (clean-fid's KID stats use "feats").
    for key in metrics.FEATURE_KEYS:
        np.savez(tmp_path / f"{key}.npz", **{key: feats})
        mu3, sigma3, meta = metrics.load_statistics(tmp_path / f"{key}.npz")
        np.testing.assert_allclose(mu3, mu, rtol=1e-12)
        np.testing.assert_allclose(sigma3, sigma, rtol=1e-12)
        np.testing.assert_array_equal(meta.pop("features"), feats)
        assert meta == {"num_images": 40}


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        metrics.load_statistics(tmp_path / "nowhere.npz")
    np.savez(tmp_path / "bad.npz", images=np.zeros(3), labels=np.zeros(3))
    with pytest.raises(ValueError, match=r"neither.*\['images', 'labels'\]"):
        metrics.load_statistics(tmp_path / "bad.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single .npy"):
        metrics.load_statistics(tmp_path / "single.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        metrics.load_statistics(tmp_path / "junk.npz")
    # Statistics of a different extractor are caught when compared.
    mu, sigma, _ = metrics.load_statistics(
        metrics.save_statistics(tmp_path / "digits", np.zeros(64), np.eye(64))
    )
    with pytest.raises(ValueError, match="same feature extractor"):
        metrics.frechet_distance(mu, sigma, np.zeros(2048), np.eye(2048))
