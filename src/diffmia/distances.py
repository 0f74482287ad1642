"""Similarities between a query's embedding and its generations' embeddings, signed so that higher = more similar.

Every function takes two arrays whose last axis is the embedding dimension and broadcasts over the others, so
the same call serves pooled vectors (n, d) and per-token outputs (n, tokens, d): with tokens the result keeps
one score per token (per-patch scores); given (n, d, tokens) it keeps one per hidden unit. Distances are negated
here, once, so that a generation identical to its query scores highest under every measure.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diffmia.errors import ConfigError
from diffmia.records import FloatArray
from diffmia.registry import Registry

Similarity = Callable[[np.ndarray, np.ndarray], FloatArray]


def cosine(a: np.ndarray, b: np.ndarray) -> FloatArray:
    """Cosine similarity in [-1, 1]; a zero vector is orthogonal to everything (similarity 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    dots = (a * b).sum(axis=-1)
    return np.asarray(np.divide(dots, norms, out=np.zeros(np.broadcast(dots, norms).shape), where=norms > 0))


def l1(a: np.ndarray, b: np.ndarray) -> FloatArray:
    """Negated mean absolute difference per dimension."""
    return np.asarray(-np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean(axis=-1), np.float64)


def l2(a: np.ndarray, b: np.ndarray) -> FloatArray:
    """Negated Euclidean distance."""
    return np.asarray(-np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1), np.float64)


def binary_code(x: np.ndarray) -> np.ndarray:
    """One bit per dimension: is the value above the vector's own mean? (sign of the centred embedding)."""
    x = np.asarray(x, np.float64)
    return np.asarray(x > x.mean(axis=-1, keepdims=True), dtype=bool)


def hamming(a: np.ndarray, b: np.ndarray) -> FloatArray:
    """Negated share of differing bits between the binary codes of ``a`` and ``b`` (a real Hamming distance)."""
    return np.asarray(-(binary_code(a) != binary_code(b)).mean(axis=-1), np.float64)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> FloatArray:
    """Structural similarity (Wang et al. 2004; Gaussian window, K1 = 0.01, K2 = 0.03) of images in [0, 1].

    ``a`` is one image (H, W) or (H, W, C); ``b`` is one image or a stack (m, H, W[, C]). Colour channels are
    averaged. Returns the mean SSIM of each image of ``b`` with ``a``: 1 for identical images.
    """
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    single = b.ndim == a.ndim
    stack = b[None] if single else b
    if stack.shape[1:] != a.shape:
        raise ConfigError(f"ssim needs images of one size, got {a.shape} and {stack.shape[1:]}")
    c1, c2 = 0.01**2, 0.03**2
    sigmas = (sigma, sigma) + (0,) * (a.ndim - 2)  # smooth within each channel only

    def blur(x: np.ndarray) -> np.ndarray:
        return np.asarray(gaussian_filter(x, sigmas, truncate=3.5, mode="reflect"))

    mu_a = blur(a)
    out = []
    for image in stack:
        mu_b = blur(image)
        var_a, var_b = blur(a * a) - mu_a**2, blur(image * image) - mu_b**2
        cov = blur(a * image) - mu_a * mu_b
        index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        out.append(index.mean())
    result = np.asarray(out, np.float64)
    return np.asarray(result[0] if single else result, np.float64)


# the similarity registries: on embeddings (any encoder's, pooled, per token or per unit), and on the images
# themselves (their encoder column is "pixels"); features.distances takes the names of both
SIMILARITIES: Registry[Similarity] = Registry("distance", {"cosine": cosine, "l1": l1, "l2": l2, "hamming": hamming})
IMAGE_SIMILARITIES: Registry[Similarity] = Registry("distance", {"ssim": ssim})
AGGREGATIONS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry(
    "aggregation",
    {
        "mean": lambda s: s.mean(axis=0),
        "max": lambda s: s.max(axis=0),
        "min": lambda s: s.min(axis=0),
        "std": lambda s: s.std(axis=0),
    },
)


def similarity_names() -> list[str]:
    """Every similarity an audit can compute: those on embeddings, then those on images."""
    return [*SIMILARITIES, *IMAGE_SIMILARITIES]


def similarity(name: str) -> Similarity:
    """The similarity on embeddings registered as ``name``."""
    return SIMILARITIES.lookup(name)


def aggregate(scores: np.ndarray, how: str) -> FloatArray:
    """Aggregate the scores of the m generations of one query (axis 0) by mean, max, min or std."""
    return np.asarray(AGGREGATIONS.lookup(how)(np.asarray(scores, np.float64)), dtype=np.float64)
