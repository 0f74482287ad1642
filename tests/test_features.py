"""Features: hand-computed similarities through the table, column names, the embedding cache, blind features."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffmia.encoders import PixelEncoder
from diffmia.errors import ConfigError, DataError
from diffmia.features import CachedEncoder, blind_features, build_features, outsider_spread, versus_outsiders


class ColourTokens:
    """A small deterministic encoder: two tokens per image, the mean colour of its top and bottom halves."""

    fingerprint = "colour-tokens"

    def __init__(self):
        self.calls = 0

    def encode(self, images):
        self.calls += len(images)
        out = []
        for im in images:
            a = np.asarray(im, np.float64) / 255.0
            h = a.shape[0] // 2
            out.append([a[:h].mean(axis=(0, 1)), a[h:].mean(axis=(0, 1))])
        return np.asarray(out, np.float32)

    def pool(self, tokens):  # the first token, as a CLS-pooled encoder
        return tokens[:, 0]


class MeanColourTokens(ColourTokens):
    """The same tokens, pooled by their mean (an encoder with pooling="mean"): the whole image's mean colour."""

    fingerprint = "mean-colour-tokens"

    def pool(self, tokens):
        return tokens.mean(axis=1)


def _flat(rgb_top, rgb_bottom=None):
    a = np.zeros((4, 4, 3), np.uint8)
    a[:2], a[2:] = rgb_top, rgb_bottom if rgb_bottom is not None else rgb_top
    return Image.fromarray(a)


def test_similarities_through_the_table():
    red, green, mixed = _flat((255, 0, 0)), _flat((0, 255, 0)), _flat((255, 0, 0), (0, 255, 0))
    table = build_features(
        ["q1", "q2"],
        [red, green],
        [[red, mixed], [red, red]],
        {"colour": ColourTokens()},
        distances=("cosine",),
        granularities=("pooled", "token"),
        aggregations=("mean", "max"),
        labels=np.array([True, False]),
    )
    assert table.names == (
        "colour/cosine/pooled/mean",
        "colour/cosine/pooled/max",
        "colour/cosine/token000/mean",
        "colour/cosine/token001/mean",
        "colour/cosine/token000/max",
        "colour/cosine/token001/max",
    )
    column = dict(zip(table.names, table.X.T, strict=True))
    # pooled = first token (top half): q1 red vs red, red -> 1, 1; q2 green vs red, red -> 0, 0
    np.testing.assert_allclose(column["colour/cosine/pooled/mean"], [1.0, 0.0])
    # bottom token: q1 red vs [red, green] -> mean 0.5, max 1
    np.testing.assert_allclose(column["colour/cosine/token001/mean"], [0.5, 0.0])
    np.testing.assert_allclose(column["colour/cosine/token001/max"], [1.0, 0.0])
    np.testing.assert_array_equal(table.y, [True, False])


class RandomTokens:
    """Five tokens of four hidden units per image, drawn from the image's pixels (a fixed function of them)."""

    fingerprint = "random-tokens"

    def encode(self, images):
        return np.stack([np.random.default_rng(int(np.asarray(im).sum())).normal(size=(5, 4)) for im in images])

    def pool(self, tokens):
        return tokens[:, 0]


def test_unit_features_are_the_reference_codes_cosine_over_the_token_axis():
    """Granularity "unit": one column per hidden unit, the similarity of the unit's values across all tokens, as
    the reference code computes ``torch.nn.functional.cosine_similarity(query, generation, dim=1)`` on (batch,
    tokens, units); aggregated over the generations like every column; its L2 is the distance of those vectors."""
    import torch

    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)) for _ in range(6)]
    queries, generations = images[:2], [images[2:4], images[4:6]]
    table = build_features(
        ["a", "b"],
        queries,
        generations,
        {"r": RandomTokens()},
        distances=("cosine", "l2"),
        granularities=("unit",),
        aggregations=("mean", "max"),
    )
    assert table.names[:5] == (
        "r/cosine/unit0000/mean",
        "r/cosine/unit0001/mean",
        "r/cosine/unit0002/mean",
        "r/cosine/unit0003/mean",
        "r/cosine/unit0000/max",
    )
    assert len(table.names) == 2 * 2 * 4
    column = dict(zip(table.names, table.X.T, strict=True))
    encode = RandomTokens().encode
    for i, (query, group) in enumerate(zip(queries, generations, strict=True)):
        q = torch.tensor(encode([query]))
        cos = torch.stack(
            [torch.nn.functional.cosine_similarity(q, torch.tensor(encode([g])), dim=1)[0] for g in group]
        )  # (generations, units)
        l2 = np.stack([-np.linalg.norm(encode([query])[0] - encode([g])[0], axis=0) for g in group])
        for u in range(4):
            assert column[f"r/cosine/unit{u:04d}/mean"][i] == pytest.approx(float(cos[:, u].mean()), rel=1e-9)
            assert column[f"r/cosine/unit{u:04d}/max"][i] == pytest.approx(float(cos[:, u].max()), rel=1e-9)
            assert column[f"r/l2/unit{u:04d}/mean"][i] == pytest.approx(l2[:, u].mean(), rel=1e-9)
    # a vector encoder has no units: the granularity adds no column for it
    pixels = build_features(
        ["a"],
        queries[:1],
        generations[:1],
        {"pixels": PixelEncoder(size=4)},
        distances=("l2",),
        granularities=("pooled", "unit"),
    )
    assert pixels.names == ("pixels/l2/pooled/mean",)


def test_pooled_features_pool_as_the_encoder_does(tmp_path):
    """The pooled granularity and the blind features use the encoder's own pooling (here the mean of the tokens,
    through the embedding cache too), not always the first token; an encoder of tokens without one is refused."""
    red, green, mixed = _flat((255, 0, 0)), _flat((0, 255, 0)), _flat((255, 0, 0), (0, 255, 0))
    for encoder in (MeanColourTokens(), CachedEncoder(MeanColourTokens(), tmp_path)):
        table = build_features(
            ["q1", "q2"],
            [red, mixed],
            [[mixed, green], [red, mixed]],
            {"colour": encoder},
            distances=("cosine",),
            aggregations=("mean",),
        )
        # mean colours: red (1, 0, 0), green (0, 1, 0), mixed (.5, .5, 0): cos(red, mixed) = 1 / sqrt(2)
        np.testing.assert_allclose(table.X[:, 0], [(2**-0.5 + 0.0) / 2, (2**-0.5 + 1.0) / 2], rtol=1e-6)
        blind = blind_features(["q1", "q2"], [red, mixed], {"colour": encoder})
        pooled = [blind.names.index(f"blind/colour/{j:03d}") for j in range(3)]
        np.testing.assert_allclose(blind.X[:, pooled], [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], atol=1e-6)

    class Unpooled:
        fingerprint = "unpooled"

        def encode(self, images):
            return ColourTokens().encode(images)

    with pytest.raises(ConfigError, match=r"^encoder unpooled returns tokens but has no pool method"):
        build_features(["q"], [red], [[red]], {"u": Unpooled()})


def test_pixel_encoder_l2_and_ssim():
    rng = np.random.default_rng(0)
    query = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    other = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    table = build_features(
        ["q"],
        [query],
        [[query, other]],
        {"pixels": PixelEncoder(size=8)},
        distances=("l2", "ssim"),
        aggregations=("max", "min"),
    )
    column = dict(zip(table.names, table.X[0], strict=True))
    assert column["pixels/l2/pooled/max"] == 0.0  # the identical generation
    expected = -np.linalg.norm((np.asarray(query, float) - np.asarray(other, float)).ravel() / 255.0)
    assert column["pixels/l2/pooled/min"] == pytest.approx(expected, rel=1e-5)
    assert column["pixels/ssim/pooled/max"] == pytest.approx(1.0)
    assert column["pixels/ssim/pooled/min"] < 0.2


def test_cached_embeddings_equal_computed_ones(tmp_path):
    images = [_flat((i * 40, 10, 200)) for i in range(5)]
    encoder = ColourTokens()
    cached = CachedEncoder(encoder, tmp_path)
    first = cached.encode(images + images[:2])  # repeats are encoded once
    assert encoder.calls == 5
    again = CachedEncoder(ColourTokens(), tmp_path)
    np.testing.assert_array_equal(again.encode(images), ColourTokens().encode(images))
    assert again.computed == 0
    np.testing.assert_array_equal(first[:5], again.encode(images))


def test_blind_features_and_input_errors():
    images = [_flat((0, 0, 0)), _flat((255, 255, 255))]
    table = blind_features(["a", "b"], images, {"colour": ColourTokens()})
    column = dict(zip(table.names, table.X.T, strict=True))
    np.testing.assert_allclose(column["blind/mean"], [0.0, 1.0])
    np.testing.assert_allclose(column["blind/ink"], [0.0, 1.0])
    assert "blind/colour/002" in column
    with pytest.raises(DataError, match="same positive number of generations"):
        build_features(["a", "b"], images, [[images[0]], []], {"colour": ColourTokens()})


def test_distance_from_outsiders_by_hand():
    """LiRA offline with a fixed spread per column: the spread pools each candidate's scatter around its own mean
    (candidate 1: 1 and 3, mean 2; candidate 2: 10, 10, 16, mean 12; column 2 never varies)."""
    outsiders = [
        np.array([[1.0, 5.0], [3.0, 5.0]]),
        np.array([[10.0, 5.0], [10.0, 5.0], [16.0, 5.0]]),
        np.array([[7.0, 5.0]]),
    ]  # a lone outsider adds no degree of freedom
    spread = outsider_spread(outsiders)
    np.testing.assert_allclose(spread, [np.sqrt((1 + 1 + 4 + 4 + 16) / (1 + 2)), 1.0])
    references = np.array([[[1.0, 5.0], [3.0, 5.0]], [[10.0, 5.0], [16.0, 5.0]]])  # 2 rows, 2 models, 2 columns
    distance = versus_outsiders(np.array([[8.0, 5.0], [13.0, 6.0]]), references, spread)
    np.testing.assert_allclose(distance, [[6.0 / spread[0], 0.0], [0.0, 1.0]])
    with pytest.raises(DataError, match="at least two models it was not fine-tuned on"):
        outsider_spread([np.array([[1.0]]), np.array([[2.0]])])
