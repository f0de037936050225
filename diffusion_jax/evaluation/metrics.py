"""Sample-quality metrics over feature arrays: FID, Inception Score, KID and statistics files.

    acc = metrics.StatsAccumulator()
    for batch in feature_batches:                     # e.g. [B, 2048] Inception pool features
        acc.update(batch)
    mu, sigma = acc.result()
    mu_ref, sigma_ref, meta = metrics.load_statistics("fid_stats_cifar10_train.npz")
    fid = metrics.frechet_distance(mu, sigma, mu_ref, sigma_ref)
    is_mean, is_std = metrics.inception_score(logits, splits=10)
    kid_mean, kid_std = metrics.kernel_inception_distance(real_features, fake_features)

Inputs are an extractor's features (or logits); scores match published ones only for the same
extractor (Inception-v3 pool3 for FID / KID, its logits for IS). All in float64 numpy; KID's
unbiased MMD^2 is `two_sample`'s estimator, cubic kernel. Precision/recall: `precision_recall`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from diffusion_jax.evaluation import two_sample

FEATURE_KEYS = ("features", "feats")  # raw-feature npz files; "feats" is clean-fid's KID format
_SAME_EXTRACTOR = "the reference statistics must come from the same feature extractor"


def as_features(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {x.shape}.")
    return x


def check_same_dim(d1: int, d2: int, what: str) -> None:
    if d1 != d2:
        raise ValueError(
            f"{what} have feature dimension {d1} and {d2}: {_SAME_EXTRACTOR} (and layer) as the "
            "features they are compared with."
        )


class StatsAccumulator:
    """Running float64 mean and unbiased covariance of feature rows: batches are centred then merged
    by Chan et al.'s update (M2 += M2_b + delta delta^T n_a n_b / n), so a common offset does not
    cancel the covariance's digits, and 50,000 x 2048 features need not fit in memory at once."""

    def __init__(self):
        self.num_samples = 0
        self._mean: np.ndarray | None = None  # [D]
        self._m2: np.ndarray | None = None  # [D, D] sum of centred outer products

    def update(self, batch) -> None:
        batch = as_features(batch, "A feature batch").astype(np.float64)
        if not np.all(np.isfinite(batch)):
            raise ValueError("Features contain NaN or inf.")
        n_b, dim = batch.shape
        mean_b = batch.mean(0)
        centred = batch - mean_b
        m2_b = centred.T @ centred
        if self._mean is None:
            self.num_samples, self._mean, self._m2 = n_b, mean_b, m2_b
            return
        check_same_dim(len(self._mean), dim, "Feature batches")
        n_a = self.num_samples
        n = n_a + n_b
        delta = mean_b - self._mean
        self._m2 += m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self._mean += delta * (n_b / n)
        self.num_samples = n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu [D], sigma [D, D]), both float64; sigma as np.cov(features, rowvar=False)."""
        if self.num_samples < 2:
            raise ValueError(f"A covariance needs at least 2 samples, got {self.num_samples}.")
        sigma = self._m2 / (self.num_samples - 1)
        return self._mean.copy(), (sigma + sigma.T) / 2.0


def feature_statistics(features, *, chunk_size: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], unbiased sigma [D, D]) of features [N, D] in float64; rows are converted
    `chunk_size` at a time, so a float32 array is never copied whole."""
    features = as_features(features, "features")
    acc = StatsAccumulator()
    for start in range(0, len(features), chunk_size):
        acc.update(features[start : start + chunk_size])
    return acc.result()


def _check_stats(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1:
        raise ValueError(f"{name}: mu must be a [D] vector, got shape {mu.shape}.")
    if sigma.shape != (len(mu), len(mu)):
        raise ValueError(
            f"{name}: sigma must be [D, D] with D = len(mu) = {len(mu)}, got shape {sigma.shape}."
        )
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{name}: statistics contain NaN or inf.")
    return mu, (sigma + sigma.T) / 2.0


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """PSD eigenvalues with those below D eps max(w) (the usual numerical-rank cutoff) zeroed: sqrt
    would blow 1e-16 noise up to 1e-8 per null direction, which adds up over the hundreds of null
    directions of an N < D covariance."""
    return np.where(w > len(w) * np.finfo(w.dtype).eps * max(w.max(), 0.0), w, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID on Inception features):

        |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2}).

    sigma1 sigma2 is not symmetric but is similar to the PSD S = sigma1^{1/2} sigma2 sigma1^{1/2},
    so the trace is sum_i sqrt(lambda_i(S)) (`eigh`, numerically-zero or negative eigenvalues set
    to 0): finite and accurate for singular covariances (N < D), where scipy's sqrtm needs the
    reference code's eps-offset fallback. Clipped at 0 (identical statistics can give -1e-12)."""
    mu1, sigma1 = _check_stats(mu1, sigma1, "First statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "Second statistics")
    check_same_dim(len(mu1), len(mu2), "The two statistics")
    root1 = _psd_sqrt(sigma1)
    s = root1 @ sigma2 @ root1
    tr_covmean = np.sum(np.sqrt(_clip_eigenvalues(np.linalg.eigvalsh((s + s.T) / 2.0))))
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return float(max(fid, 0.0))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def inception_score(
    logits_or_probs, splits: int = 10, from_logits: bool = True
) -> tuple[float, float]:
    """(mean, population std) of the Inception Score exp(E_x KL(p(y|x) || p(y))) over chunks
    [i N // splits, (i + 1) N // splits) of rows, p(y) the chunk's mean p(y|x), as DDPM, TF-GAN and
    the original IS code report it. `from_logits=False`: probabilities [N, K] (renormalised)."""
    x = as_features(logits_or_probs, "logits_or_probs").astype(np.float64)
    n = len(x)
    if not 1 <= splits <= n:
        raise ValueError(f"splits must lie in [1, N = {n}], got {splits}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("logits_or_probs contain NaN or inf.")
    if from_logits:
        log_p = x - _logsumexp(x, 1)[:, None]
    else:
        row_sums = x.sum(1)
        if np.any(x < 0) or np.any(np.abs(row_sums - 1.0) > 1e-3):
            raise ValueError(
                "from_logits=False needs probabilities: non-negative rows that sum to 1 "
                f"(row sums range over [{row_sums.min():.4g}, {row_sums.max():.4g}]). "
                "Pass from_logits=True for logits."
            )
        with np.errstate(divide="ignore"):
            log_p = np.log(x / row_sums[:, None])
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        chunk_p, chunk_log_p = p[rows], log_p[rows]
        log_py = _logsumexp(chunk_log_p, 0) - np.log(len(chunk_p))  # log mean_x p(y|x)  [K]
        with np.errstate(invalid="ignore"):  # 0 * (-inf - -inf) where p(y|x) = 0: the term is 0
            terms = np.where(chunk_p > 0, chunk_p * (chunk_log_p - log_py), 0.0)
        scores.append(np.exp(np.mean(np.sum(terms, 1))))
    return float(np.mean(scores)), float(np.std(scores))


def _cubic_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _kid_inputs(f_real, f_fake, subset_size: int):
    f_real = as_features(f_real, "f_real")
    f_fake = as_features(f_fake, "f_fake")
    check_same_dim(f_real.shape[1], f_fake.shape[1], "f_real and f_fake")
    m = min(subset_size, len(f_real), len(f_fake))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples, got subset size {m}.")
    return f_real, f_fake, m


def _pooled_subset(f_real, f_fake, m, rng):
    """[2m, D] float64: m random rows of each set (without replacement), real rows first."""
    real = f_real[rng.choice(len(f_real), m, replace=False)]
    fake = f_fake[rng.choice(len(f_fake), m, replace=False)]
    return np.concatenate([real, fake]).astype(np.float64)


def kernel_inception_distance(
    f_real, f_fake, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID as in Binkowski et al. (2018), TF-GAN and clean-fid: (mean, std) over `num_subsets` draws
    of m = min(subset_size, N_real, N_fake) rows of each set (no replacement) of `two_sample`'s
    unbiased MMD^2 (0 in expectation for equal distributions, possibly slightly negative)

        MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) / (m (m-1))
                  - 2 sum_{i,j} k(x_i, y_j) / m^2,   with k(x, y) = (x.y / d + 1)^3."""
    f_real, f_fake, m = _kid_inputs(f_real, f_fake, subset_size)
    rng = np.random.default_rng(seed)
    in_x = np.arange(2 * m) < m
    values = []
    for _ in range(num_subsets):
        z = _pooled_subset(f_real, f_fake, m, rng)
        values.append(two_sample._mmd2_from_kernel(_cubic_kernel(z, z), in_x))
    return float(np.mean(values)), float(np.std(values))


def kid_permutation_test(
    f_real, f_fake, num_permutations: int = 200, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(MMD^2_u, p-value) of H0: both sets share a distribution, on one random subset of m rows of
    each: `two_sample.mmd_permutation_test` with KID's cubic kernel instead of a Gaussian (the
    share of random relabellings of the pooled 2m rows with a statistic >= the observed one)."""
    f_real, f_fake, m = _kid_inputs(f_real, f_fake, subset_size)
    rng = np.random.default_rng(seed)
    z = _pooled_subset(f_real, f_fake, m, rng)
    k = _cubic_kernel(z, z)
    in_x = np.arange(2 * m) < m
    observed = two_sample._mmd2_from_kernel(k, in_x)
    exceed = sum(
        two_sample._mmd2_from_kernel(k, rng.permutation(in_x)) >= observed
        for _ in range(num_permutations)
    )
    return observed, (exceed + 1) / (num_permutations + 1)


def save_statistics(path: str | os.PathLike, mu, sigma, **metadata) -> Path:
    """Writes mu [D], sigma [D, D] (float64) and metadata (e.g. num_images=50000, dataset="cifar10",
    the raw features=[N, D] that KID and precision/recall need) to an npz; returns its path."""
    mu, sigma = _check_stats(mu, sigma, "save_statistics")
    for key, value in metadata.items():
        if np.asarray(value).dtype == object:
            raise ValueError(
                f"Metadata must be strings, numbers or numeric arrays; {key!r} is not."
            )
    if "features" in metadata:
        features = as_features(metadata["features"], "features")
        check_same_dim(len(mu), features.shape[1], "mu and features")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=mu, sigma=sigma, **metadata)
    return path


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """float64 (mu [D], sigma [D, D], metadata) of an npz with `mu`, `sigma` (`save_statistics`,
    TTUR's fid_stats_*.npz, clean-fid's FID stats, guided-diffusion's reference batches) or raw
    features [N, D] under `features` or `feats` (clean-fid's KID stats; metadata["num_images"] = N
    unless the file says otherwise). metadata also holds its scalars as Python values and any
    features as metadata["features"] (as stored); other arrays (images, ...) are not read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No statistics file at {path}.")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz statistics file ({e}).") from e
    if isinstance(data, np.ndarray):
        raise ValueError(f"{path} is a single .npy array; statistics files are .npz archives.")
    with data:
        keys = list(data.keys())
        metadata = {}
        for key in keys:
            if key not in ("mu", "sigma", *FEATURE_KEYS) and data[key].ndim == 0:
                metadata[key] = data[key].item()
        feature_key = next((key for key in FEATURE_KEYS if key in keys), None)
        if feature_key is not None:
            features = data[feature_key]
            if features.ndim < 2 or len(features) == 0:
                raise ValueError(
                    f"{path}: {feature_key!r} must be [N, D] features, got {features.shape}."
                )
            metadata["features"] = features.reshape(len(features), -1)
        if "mu" in keys and "sigma" in keys:
            mu, sigma = _check_stats(data["mu"], data["sigma"], str(path))
            if feature_key is not None:
                check_same_dim(len(mu), metadata["features"].shape[1], f"{path}: mu and features")
            return mu, sigma, metadata
        if feature_key is not None:
            mu, sigma = feature_statistics(metadata["features"])
            metadata.setdefault("num_images", len(features))
            return mu, sigma, metadata
    raise ValueError(
        f"{path} holds neither statistics (keys 'mu' and 'sigma') nor raw features (one of "
        f"{list(FEATURE_KEYS)}); its keys are {keys}."
    )
