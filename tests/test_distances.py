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
