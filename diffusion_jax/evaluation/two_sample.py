"""Kernel two-sample tests: is a set of samples distributed like the data?

    mmd2, p = two_sample.mmd_permutation_test(samples, reference, rng=np.random.default_rng(0))
    reject = p < 0.05            # the samples differ from the reference at the 5% level

The statistic is the unbiased MMD^2 (Gretton et al. 2012) with a Gaussian kernel of bandwidth the
median pairwise distance of the pooled samples; the p-value is the share of random relabellings
with a statistic at least as large. Plain numpy: thousands of samples fit in one kernel matrix.
"""

from __future__ import annotations

import numpy as np


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2.0 * a @ b.T, 0.0)


def median_bandwidth(z: np.ndarray, max_points: int = 2000) -> float:
    """The median pairwise Euclidean distance of (at most `max_points` of) the rows of z."""
    z = z[:max_points]
    d = np.sqrt(_sq_dists(z, z))
    return float(np.median(d[np.triu_indices(len(z), k=1)]))


def _mmd2_from_kernel(k: np.ndarray, in_x: np.ndarray) -> float:
    """Unbiased MMD^2 from the pooled kernel matrix and a boolean mask of the first sample."""
    kxx, kyy, kxy = k[in_x][:, in_x], k[~in_x][:, ~in_x], k[in_x][:, ~in_x]
    m, n = kxx.shape[0], kyy.shape[0]
    sum_xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    sum_yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sum_xx + sum_yy - 2.0 * kxy.mean())


def mmd_permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_permutations: int = 200,
    bandwidth: float | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """(MMD^2, p-value) of H0: x and y [N, D] come from the same distribution."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("Each sample needs at least 2 points.")
    rng = np.random.default_rng(0) if rng is None else rng
    z = np.concatenate([x, y])
    bandwidth = bandwidth or median_bandwidth(z)
    k = np.exp(-_sq_dists(z, z) / (2.0 * bandwidth**2))
    in_x = np.zeros(len(z), bool)
    in_x[: len(x)] = True
    observed = _mmd2_from_kernel(k, in_x)
    exceed = sum(
        _mmd2_from_kernel(k, rng.permutation(in_x)) >= observed for _ in range(num_permutations)
    )
    return observed, (exceed + 1) / (num_permutations + 1)
