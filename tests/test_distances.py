"""Distances: hand-computed values, the sign convention, per-token vs pooled shapes, aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from diffmia.distances import SIMILARITIES, aggregate, binary_code, cosine, hamming, l1, l2, similarity, ssim
from diffmia.errors import ConfigError


def test_hand_computed_values():
    a, b = np.array([1.0, 0.0, 2.0]), np.array([0.0, 2.0, 2.0])
    assert cosine(a, b) == pytest.approx(4 / (np.sqrt(5) * np.sqrt(8)))
    assert l1(a, b) == pytest.approx(-(1 + 2 + 0) / 3)
    assert l2(a, b) == pytest.approx(-np.sqrt(1 + 4 + 0))
    # codes: a > mean 1 -> [F, F, T]; b > mean 4/3 -> [F, T, T]: one bit of three differs
    np.testing.assert_array_equal(binary_code(a), [False, False, True])
    assert hamming(a, b) == pytest.approx(-1 / 3)
    assert cosine(np.zeros(3), b) == 0.0


@pytest.mark.parametrize("name", SIMILARITIES)
def test_identical_generation_scores_highest(name):
    rng = np.random.default_rng(0)
    query = rng.standard_normal(64)
    others = rng.standard_normal((20, 64))
    scores = similarity(name)(query, np.vstack([query, others]))
    assert scores[0] == scores.max()
    assert (scores[0] > scores[1:]).all() or name == "hamming"  # codes may collide, never exceed
    assert (scores[0] >= scores[1:]).all()


def test_per_token_and_pooled_shapes():
    rng = np.random.default_rng(1)
    query, generations = rng.standard_normal((5, 8)), rng.standard_normal((3, 5, 8))  # 5 tokens, m = 3
    per_token = cosine(query, generations)
    assert per_token.shape == (3, 5)
    pooled = cosine(query.mean(axis=0), generations.mean(axis=1))
    assert pooled.shape == (3,)
    np.testing.assert_allclose(aggregate(per_token, "mean"), per_token.mean(axis=0))
    np.testing.assert_allclose(aggregate(pooled, "max"), pooled.max())
    assert aggregate(np.array([1.0, 3.0]), "std") == pytest.approx(1.0)
    assert aggregate(np.array([1.0, 3.0]), "min") == 1.0


def test_unknown_names():
    with pytest.raises(ConfigError, match="valid: cosine, l1, l2, hamming"):
        similarity("l3")
    with pytest.raises(ConfigError, match="valid: mean, max, min, std"):
        aggregate(np.zeros(2), "median")


def test_ssim_hand_computed_and_ordered():
    a, b = np.full((8, 8), 0.2), np.full((8, 8), 0.6)
    c1 = 0.01**2
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1))  # flat: luminance term only
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3))
    noisy = [np.clip(image + rng.normal(0, s, image.shape), 0, 1) for s in (0.05, 0.2, 0.5)]
    scores = ssim(image, np.stack([image, *noisy]))
    assert scores[0] == pytest.approx(1.0)
    assert list(scores) == sorted(scores, reverse=True)  # more noise, lower similarity
    assert ssim(noisy[0], image) == pytest.approx(ssim(image, noisy[0]))


def _random_covariance(rng, d):
    m = rng.standard_normal((d, d))
    return m @ m.T + 0.1 * np.eye(d)


def _sqrt_psd(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet_reference(a, b):
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)), straight from the formula."""
    from scipy.linalg import sqrtm

    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * np.real(sqrtm(sa @ sb))))


def _frechet_symmetric(a, b):
    """The same distance by another road: Tr sqrtm(S_a S_b) = Tr (S_a^1/2 S_b S_a^1/2)^1/2, by eigenvalues only."""
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(sa)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sb @ root_a), 0, None)).sum()
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa) + np.trace(sb) - 2 * cross)


def _with_sample_moments(rng, n, mean, root_cov):
    """n rows whose sample mean is exactly ``mean`` and sample covariance (ddof 1) exactly root_cov root_cov^T."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened: sample covariance I
    return mean + z @ np.asarray(root_cov).T


def test_frechet_distance_hand_cases():
    from diffmia.lab.classifier import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # 1-D: (m_a - m_b)^2 + (s_a - s_b)^2. [1, 3]: mean 2, variance 2; [4, 8]: mean 6, variance 8
    one, two = np.array([[1.0], [3.0]]), np.array([[4.0], [8.0]])
    assert (2 - 6) ** 2 + (np.sqrt(2) - np.sqrt(8)) ** 2 == pytest.approx(18.0)
    assert frechet_distance(one, two) == pytest.approx(18.0)
    assert frechet_distance(one, two) == pytest.approx(_frechet_reference(one, two))
    # commuting (diagonal) covariances: |m_a - m_b|^2 + sum_i (s_a,i - s_b,i)^2
    m_a, m_b = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    s_a, s_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
    x, y = _with_sample_moments(rng, 40, m_a, np.diag(s_a)), _with_sample_moments(rng, 60, m_b, np.diag(s_b))
    expected = np.sum((m_a - m_b) ** 2) + np.sum((s_a - s_b) ** 2)  # 4.25 + 4 + 1 = 9.25
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(x, x + np.array([3.0, 4.0, 0.0])) == pytest.approx(25.0)  # a pure shift: |shift|^2


@pytest.mark.parametrize("seed", range(3))
def test_frechet_distance_equals_the_formula_on_gaussian_samples(seed):
    """Correlated, non-commuting covariances, where Tr sqrtm(S_a S_b) differs from Tr(S_a^1/2 S_b^1/2)."""
    from diffmia.lab.classifier import frechet_distance

    rng = np.random.default_rng(seed)
    d = 5
    a = rng.multivariate_normal(rng.normal(0, 1, d), _random_covariance(rng, d), size=200)
    b = rng.multivariate_normal(rng.normal(0, 1, d), _random_covariance(rng, d), size=300)
    reference = _frechet_reference(a, b)
    assert reference == pytest.approx(_frechet_symmetric(a, b), rel=1e-8)  # the two references agree
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(reference, rel=1e-8)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    product_of_roots = np.trace(_sqrt_psd(sa) @ _sqrt_psd(sb))
    cross = (np.trace(sa) + np.trace(sb) + np.sum((a.mean(0) - b.mean(0)) ** 2) - reference) / 2
    assert abs(cross - product_of_roots) > 1e-3  # so a wrong cross term would show


def test_frechet_distance_rejects_mismatched_sets():
    from diffmia.errors import DataError
    from diffmia.lab.classifier import frechet_distance

    with pytest.raises(DataError, match="two sets of >= 2 feature rows of one width"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(DataError, match="two sets of >= 2 feature rows"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# --- cases found by mutation testing (docs/mutation.md) --------------------------------------------------------------


def test_per_token_values_equal_a_loop_over_vectors():
    rng = np.random.default_rng(2)
    query, generations = rng.standard_normal((5, 8)), rng.standard_normal((3, 5, 8)) * 3  # 5 tokens, m = 3
    for name, measure in SIMILARITIES.items():
        expected = [[measure(query[t], generations[g, t]) for t in range(5)] for g in range(3)]
        np.testing.assert_allclose(measure(query, generations), expected, rtol=1e-12, err_msg=name)
    # the binary code centres each vector on its own mean, not on the mean of the whole array
    np.testing.assert_array_equal(binary_code([[1.0, 2.0, 3.0], [10.0, 20.0, 12.0]]), [[0, 0, 1], [0, 1, 0]])


def test_cosine_of_short_vectors():
    # norms below 1 are still norms: only a zero vector scores 0
    assert cosine(np.array([0.1, 0.0]), np.array([0.2, 0.0])) == pytest.approx(1.0)
    assert cosine(np.array([0.1, 0.1]), np.array([-0.1, 0.1])) == pytest.approx(0.0, abs=1e-15)
    assert cosine(np.array([0.3, 0.4]), np.array([0.4, 0.3])) == pytest.approx(0.96)


def _gaussian_response(omega, sigma=1.5, truncate=3.5):
    """H(omega) = sum_k w_k cos(omega k) of scipy's sampled Gaussian kernel (radius int(truncate sigma + 0.5))."""
    k = np.arange(-int(truncate * sigma + 0.5), int(truncate * sigma + 0.5) + 1)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    return float((w / w.sum()) @ np.cos(omega * k))


def test_ssim_closed_form_on_cosine_images():
    """Rows p + q cos(pi m (i + 1/2) / N): half-sample symmetric at both ends, so the reflected image is the cosine
    itself and the Gaussian window scales each frequency by its response H. With c = cos(theta_i), the window's
    moments are mu = p + q H(w) c and variance q^2 v, v = (1 + H(2w) cos(2 theta_i)) / 2 - H(w)^2 c^2, and the
    covariance q_a q_b v, which gives the SSIM of every row by hand.
    """
    n, m, width = 16, 3, 6
    theta = np.pi * m * (np.arange(n) + 0.5) / n
    h1, h2 = _gaussian_response(np.pi * m / n), _gaussian_response(2 * np.pi * m / n)
    c = np.cos(theta)
    v = (1 + h2 * np.cos(2 * theta)) / 2 - h1**2 * c**2
    c1, c2 = 0.01**2, 0.03**2

    def image(p, q):
        return np.repeat((p + q * c)[:, None], width, axis=1)

    def by_hand(pa, qa, pb, qb):
        mu_a, mu_b = pa + qa * h1 * c, pb + qb * h1 * c
        rows = (2 * mu_a * mu_b + c1) * (2 * qa * qb * v + c2) / ((mu_a**2 + mu_b**2 + c1) * ((qa**2 + qb**2) * v + c2))
        return rows.mean()

    a = image(0.5, 0.3)
    scores = ssim(a, np.stack([image(0.4, 0.1), image(0.6, -0.2), a]))
    np.testing.assert_allclose(scores, [by_hand(0.5, 0.3, 0.4, 0.1), by_hand(0.5, 0.3, 0.6, -0.2), 1.0], rtol=1e-9)
    assert 0 < scores[0] < 1 and scores[1] < 0  # opposite structure scores below zero
    one = ssim(a, image(0.4, 0.1))
    assert np.ndim(one) == 0 and one == pytest.approx(scores[0], rel=1e-12)  # one image in, one number out
    # colour: channels are smoothed separately, and their SSIMs averaged
    rgb_a = np.stack([image(0.5, 0.3), image(0.2, 0.1), image(0.7, -0.2)], axis=-1)
    rgb_b = np.stack([image(0.4, 0.1), image(0.3, 0.15), image(0.5, 0.2)], axis=-1)
    expected = np.mean([by_hand(0.5, 0.3, 0.4, 0.1), by_hand(0.2, 0.1, 0.3, 0.15), by_hand(0.7, -0.2, 0.5, 0.2)])
    assert ssim(rgb_a, rgb_b) == pytest.approx(expected, rel=1e-9)


def test_ssim_of_integer_images_equals_that_of_their_float_copies():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, (12, 12)), rng.integers(0, 2, (2, 12, 12))  # binary masks
    np.testing.assert_allclose(ssim(a, b), ssim(a.astype(float), b.astype(float)), rtol=1e-12)
    assert ssim(a, b[0]) == pytest.approx(ssim(a.astype(float), b[0].astype(float)), rel=1e-12)


def test_ssim_refuses_images_of_another_size():
    with pytest.raises(ConfigError, match=r"^ssim needs images of one size, got \(8, 8\) and \(6, 6\)$"):
        ssim(np.zeros((8, 8)), np.zeros((2, 6, 6)))


def test_float32_embeddings_are_compared_in_float64():
    # encoders hand out float32: every measure equals the one of the same numbers in float64
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(512).astype(np.float32), rng.standard_normal((3, 512)).astype(np.float32)
    for name, measure in SIMILARITIES.items():
        np.testing.assert_allclose(measure(a, b), measure(a.astype(float), b.astype(float)), rtol=1e-15, err_msg=name)
        np.testing.assert_allclose(measure(b, a), measure(b.astype(float), a.astype(float)), rtol=1e-15, err_msg=name)
