import numpy as np

from diffusion_jax.evaluation import two_sample


def test_same_distribution_is_not_rejected_and_a_shift_is():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
    shifted = rng.normal(size=(500, 2)) + np.array([0.3, 0.0])
    mmd_same, p_same = two_sample.mmd_permutation_test(a, b, rng=rng)
    mmd_diff, p_diff = two_sample.mmd_permutation_test(a, shifted, rng=rng)
    assert p_same > 0.05 and p_diff < 0.01
    assert abs(mmd_same) < mmd_diff


def test_false_rejection_rate_is_near_alpha():
    rng = np.random.default_rng(1)
    rejections = sum(
        two_sample.mmd_permutation_test(
            rng.normal(size=(60, 2)), rng.normal(size=(60, 2)), num_permutations=99, rng=rng
        )[1]
        < 0.05
        for _ in range(60)
    )
    assert rejections <= 9  # 3 expected at alpha 0.05; 9+ has probability < 0.1%


def test_unbiased_mmd_matches_the_definition():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 1
    h = 1.3
    mmd2, _ = two_sample.mmd_permutation_test(x, y, bandwidth=h, num_permutations=1)

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * h * h))

    xx = np.mean([k(x[i], x[j]) for i in range(5) for j in range(5) if i != j])
    yy = np.mean([k(y[i], y[j]) for i in range(4) for j in range(4) if i != j])
    xy = np.mean([k(a, b) for a in x for b in y])
    assert abs(mmd2 - (xx + yy - 2 * xy)) < 1e-12
