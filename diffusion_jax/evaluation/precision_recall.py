"""Improved precision and recall (Kynkaanniemi et al. 2019) of generated against real features.

    precision, recall = precision_recall.precision_recall(real_features, fake_features, k=3)

Each set's manifold is the union of k-NN balls around its points; precision is the share of fake
points in the real manifold, recall that of real points in the fake one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.evaluation.metrics import as_features, check_same_dim


def _sq_dists(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """|a_i|^2 + |b_j|^2 - 2 a_i.b_j, clipped at 0: [A, D], [B, D] -> [A, B]."""
    # HIGHEST: on recent GPUs the default float32 matmul is TF32, ~1e-3 relative error.
    ab = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * ab
    return jnp.maximum(d2, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _merge_knn(a, b, a_start, b_start, num_valid, nearest, *, k):
    """Folds block b into `nearest` [A, k], each row of a's k smallest squared distances to other
    rows of its set (its own column and padding columns >= num_valid excluded)."""
    d2 = _sq_dists(a, b)  # [A, B]
    rows = a_start + jnp.arange(a.shape[0])[:, None]
    cols = b_start + jnp.arange(b.shape[0])[None, :]
    d2 = jnp.where((rows == cols) | (cols >= num_valid), jnp.inf, d2)
    return -jax.lax.top_k(-jnp.concatenate([nearest, d2], 1), k)[0]


@jax.jit
def _merge_covered(q, r, radius2, covered):
    """covered [Q] |= some row of r lies within its radius of the query row."""
    return covered | jnp.any(_sq_dists(q, r) <= radius2[None, :], axis=1)


def _padded(x: np.ndarray, block: int) -> jnp.ndarray:
    dtype = jax.dtypes.canonicalize_dtype(np.float64)  # float32 unless jax_enable_x64
    pad = -len(x) % block
    return jnp.asarray(np.pad(np.asarray(x, dtype), ((0, pad), (0, 0))))


def _knn_radii2(x: jnp.ndarray, num_valid: int, k: int, block: int) -> jnp.ndarray:
    """Squared distance of each row to its k-th nearest other row, block by block: [P]."""
    radii = []
    for i in range(0, len(x), block):
        nearest = jnp.full((block, k), jnp.inf, x.dtype)
        for j in range(0, len(x), block):
            nearest = _merge_knn(x[i : i + block], x[j : j + block], i, j, num_valid, nearest, k=k)
        radii.append(nearest[:, k - 1])
    return jnp.concatenate(radii)


def _coverage(queries, q_block, num_queries, refs, r_block, radii2) -> float:
    """The share of the first num_queries rows of `queries` inside some ball (ref, radius)."""
    covered = []
    for i in range(0, len(queries), q_block):
        hit = jnp.zeros(q_block, bool)
        for j in range(0, len(refs), r_block):
            hit = _merge_covered(
                queries[i : i + q_block], refs[j : j + r_block], radii2[j : j + r_block], hit
            )
        covered.append(hit)
    return float(np.mean(np.asarray(jnp.concatenate(covered))[:num_queries]))


def precision_recall(real, fake, k: int = 3, batch_size: int = 5000) -> tuple[float, float]:
    """(precision, recall) of fake [M, D] against real [N, D] features, with balls of radius the
    distance to the k-th nearest other point of the same set. Exact distances (`_sq_dists`) in
    jitted [batch_size]^2 blocks bound memory for 50k x 50k; float32 unless jax_enable_x64."""
    real = as_features(real, "real")
    fake = as_features(fake, "fake")
    check_same_dim(real.shape[1], fake.shape[1], "real and fake")
    n, m = len(real), len(fake)
    if not 1 <= k < min(n, m):
        raise ValueError(
            f"k must lie in [1, min(N_real, N_fake) - 1] = [1, {min(n, m) - 1}], got {k}."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    r_block, f_block = min(batch_size, n), min(batch_size, m)
    real_p, fake_p = _padded(real, r_block), _padded(fake, f_block)
    # Padding rows get radius -1 so that they cover nothing.
    real_r2 = jnp.where(jnp.arange(len(real_p)) < n, _knn_radii2(real_p, n, k, r_block), -1.0)
    fake_r2 = jnp.where(jnp.arange(len(fake_p)) < m, _knn_radii2(fake_p, m, k, f_block), -1.0)
    precision = _coverage(fake_p, f_block, m, real_p, r_block, real_r2)
    recall = _coverage(real_p, r_block, n, fake_p, f_block, fake_r2)
    return precision, recall
