"""Features: (queries, their generations, encoders, distances, aggregations) -> FeatureTable.

For each encoder the query image and its m generations are embedded (embeddings are cached by image content
and encoder fingerprint); each similarity compares the query with every generation pooled (one vector per image:
one scalar), per token (the token's vectors: one score per patch) or per hidden unit (the unit's values across all
tokens: one score per unit, as the reference code computes its cosine over the token axis, 768 features for
DeiT-base), and the m scores are aggregated. Column names read ``encoder/similarity/granularity/aggregation``
(per token ``.../token017/...``, per unit ``.../unit0017/...``). Every similarity is higher for a generation more
like its query; an aggregation such as ``std`` need not point the way membership does (the distribution and
classifier attacks learn each column's direction on shadow data; the threshold attack's mean does not).
``blind_features`` describes the query alone: the model-free baseline that shows how separable members and
non-members are before any model is queried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from diffmia.distances import IMAGE_SIMILARITIES, aggregate, similarity
from diffmia.encoders import Encoder
from diffmia.errors import ConfigError, DataError
from diffmia.files import atomic_path
from diffmia.images import image_digest
from diffmia.names import Column, Reference
from diffmia.records import BoolArray, FeatureTable

GRANULARITIES = ("pooled", "token", "unit")


@dataclass(frozen=True)
class FeaturePlan:
    """Which columns a comparison of queries with their generations writes, in the order it writes them: for each
    encoder, each similarity on embeddings, each granularity the encoder allows (per token or unit only with token
    outputs), each aggregation; then each similarity on the images themselves (encoder column ``pixels``). Both the
    validation of a configuration and :func:`build_features` read the columns from here."""

    similarities: tuple[str, ...] = ("cosine",)
    granularities: tuple[str, ...] = ("pooled",)
    aggregations: tuple[str, ...] = ("mean",)

    def __post_init__(self) -> None:
        bad = [g for g in self.granularities if g not in GRANULARITIES]
        if bad:
            raise ConfigError(f"unknown granularity {bad[0]!r}; valid: {', '.join(GRANULARITIES)}")

    @property
    def embedding_similarities(self) -> list[str]:
        """The similarities on embeddings (every name but those on images: an unknown one is refused at use)."""
        return [d for d in self.similarities if d not in IMAGE_SIMILARITIES]

    @property
    def image_similarities(self) -> list[str]:
        return [d for d in self.similarities if d in IMAGE_SIMILARITIES]

    def embedding_groups(self, tokens: bool) -> list[tuple[str, str]]:
        """(similarity, granularity) of one encoder's columns, in order; ``tokens``: it gives token outputs."""
        return [(d, g) for d in self.embedding_similarities for g in self.granularities if g == "pooled" or tokens]

    def columns(
        self, encoders: Mapping[str, bool], references: Sequence[Reference] = (Reference.NONE,)
    ) -> list[Column]:
        """Every planned column (per token or unit: all of them, unnumbered); ``encoders``: short name -> whether
        it gives token outputs; each aggregation measured against each of ``references``."""
        groups = [(e, d, g) for e, tokens in encoders.items() for d, g in self.embedding_groups(tokens)]
        groups += [("pixels", d, "pooled") for d in self.image_similarities]
        return [Column(e, d, g, a, reference=r) for e, d, g in groups for r in references for a in self.aggregations]


class CachedEncoder:
    """An encoder whose embeddings are stored as ``.npy`` files keyed by image content and encoder fingerprint.

    Files are written atomically and read with ``allow_pickle=False``; a cached embedding is bit-identical to
    a computed one.
    """

    def __init__(self, encoder: Encoder, root: str | Path) -> None:
        self.encoder = encoder
        self.fingerprint = encoder.fingerprint
        key = hashlib.sha256(encoder.fingerprint.encode()).hexdigest()[:16]
        self.root = Path(root) / key
        self.computed = 0

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        paths = [self.root / f"{image_digest(im)}.npy" for im in images]
        todo: dict[Path, Image.Image] = {}  # each missing image once, however often it repeats
        for path, image in zip(paths, images, strict=True):
            if not path.exists():
                todo.setdefault(path, image)
        if todo:
            fresh = self.encoder.encode(list(todo.values()))
            self.computed += len(todo)
            self.root.mkdir(parents=True, exist_ok=True)
            for path, row in zip(todo, fresh, strict=True):
                with atomic_path(path) as tmp, tmp.open("wb") as handle:
                    np.save(handle, row, allow_pickle=False)
        rows = [np.load(p, allow_pickle=False) for p in paths]
        return np.stack(rows) if rows else np.zeros((0,), np.float32)

    def pool(self, tokens: np.ndarray) -> np.ndarray:
        """The wrapped encoder's pooling of token outputs (n, tokens, d)."""
        return np.asarray(self.encoder.pool(tokens))  # type: ignore[attr-defined]


def _pool(encoder: Encoder, embeddings: np.ndarray, tokens: bool) -> np.ndarray:
    """One vector per image: token outputs (..., tokens, d) pooled as the encoder pools them (its ``pool``: the CLS
    token, the pooler output or the mean of the tokens), a vector encoder's output as it is."""
    if not tokens:
        return embeddings
    pool = getattr(encoder, "pool", None)
    if pool is None:
        raise ConfigError(f"encoder {encoder.fingerprint} returns tokens but has no pool method to make one vector")
    flat = embeddings.reshape(-1, *embeddings.shape[-2:])
    return np.asarray(pool(flat)).reshape(*embeddings.shape[:-2], embeddings.shape[-1])


def build_features(
    sample_ids: Sequence[str],
    queries: Sequence[Image.Image],
    generations: Sequence[Sequence[Image.Image]],
    encoders: Mapping[str, Encoder],
    *,
    distances: Sequence[str] = ("cosine",),
    granularities: Sequence[str] = ("pooled",),
    aggregations: Sequence[str] = ("mean",),
    labels: BoolArray | None = None,
) -> FeatureTable:
    """The feature table of ``queries`` (one image each) against their ``generations`` (m images each), with the
    columns of :class:`FeaturePlan` (``distances`` may include ``"ssim"``, computed on the images themselves,
    resized to the query's size, rather than on an encoder's embeddings)."""
    n = len(queries)
    if len(generations) != n or len(sample_ids) != n:
        raise DataError(f"{len(sample_ids)} ids, {n} queries and {len(generations)} generation lists differ in number")
    m = {len(g) for g in generations}
    if len(m) != 1 or 0 in m:
        raise DataError(f"every query needs the same positive number of generations, got {sorted(m)}")
    plan = FeaturePlan(tuple(distances), tuple(granularities), tuple(aggregations))
    flat = [im for group in generations for im in group]
    columns: dict[str, np.ndarray] = {}
    for name, encoder in encoders.items():
        if plan.embedding_similarities:
            columns |= _embedding_columns(name, encoder, queries, flat, plan)
    for distance in plan.image_similarities:
        measure = IMAGE_SIMILARITIES[distance]
        scores = np.stack(
            [
                measure(_array(q), np.stack([_array(g, q.size) for g in group]))
                for q, group in zip(queries, generations, strict=True)
            ]
        )
        for agg in plan.aggregations:
            columns[str(Column("pixels", distance, "pooled", agg))] = aggregate(scores.T, agg)
    if not columns:
        raise ConfigError("no features: give at least one encoder and distance (or the ssim distance)")
    names = tuple(columns)
    return FeatureTable(tuple(sample_ids), np.column_stack([columns[c] for c in names]), names, labels)


def _embedding_columns(
    name: str, encoder: Encoder, queries: Sequence[Image.Image], flat: Sequence[Image.Image], plan: FeaturePlan
) -> dict[str, np.ndarray]:
    """One encoder's columns: each similarity pooled (one scalar per generation), per token (the token's vectors:
    one score per patch) or per hidden unit (the unit's values across the tokens), aggregated over generations."""
    query_emb = encoder.encode(queries)
    gen_emb = encoder.encode(flat).reshape(len(queries), -1, *query_emb.shape[1:])
    tokens = query_emb.ndim == 3
    columns: dict[str, np.ndarray] = {}
    for distance, granularity in plan.embedding_groups(tokens):
        measure = similarity(distance)
        if granularity == "pooled":
            scores = measure(_pool(encoder, query_emb, tokens)[:, None], _pool(encoder, gen_emb, tokens))
            for agg in plan.aggregations:
                columns[str(Column(name, distance, "pooled", agg))] = aggregate(scores.T, agg)
            continue
        if granularity == "token":  # per token: (n, m, tokens)
            scores = measure(query_emb[:, None], gen_emb)
        else:  # per hidden unit, its values across the tokens compared: (n, m, d)
            scores = measure(np.swapaxes(query_emb, -1, -2)[:, None], np.swapaxes(gen_emb, -1, -2))
        for agg in plan.aggregations:
            per_part = aggregate(np.moveaxis(scores, 1, 0), agg)  # (n, tokens or units)
            for k in range(per_part.shape[1]):
                columns[str(Column(name, distance, granularity, agg, k))] = per_part[:, k]
    return columns


def _array(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    rgb = image.convert("RGB")
    if size is not None and rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(rgb, np.float64) / 255.0


def blind_features(
    sample_ids: Sequence[str],
    queries: Sequence[Image.Image],
    encoders: Mapping[str, Encoder] | None = None,
    labels: BoolArray | None = None,
) -> FeatureTable:
    """Model-free features of the query images alone: pixel statistics and pooled embeddings.

    A classifier on these, fitted on shadow data, measures how separable the member and non-member sets are
    without querying any model; it should sit near AUC 0.5 when they come from one distribution.
    """
    arrays = [_array(q) for q in queries]
    grey = [a.mean(axis=-1) for a in arrays]
    columns: dict[str, np.ndarray] = {
        "blind/mean": np.array([a.mean() for a in arrays]),
        "blind/std": np.array([a.std() for a in arrays]),
        "blind/ink": np.array([(g > 0.5).mean() for g in grey]),
        "blind/edges": np.array([np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean() for g in grey]),
        **{f"blind/channel{c}": np.array([a[..., c].mean() for a in arrays]) for c in range(3)},
    }
    for name, encoder in (encoders or {}).items():
        embeddings = encoder.encode(queries)
        pooled = _pool(encoder, embeddings, embeddings.ndim == 3)
        for j in range(pooled.shape[1]):
            columns[f"blind/{name}/{j:03d}"] = pooled[:, j]
    names = tuple(columns)
    return FeatureTable(
        tuple(sample_ids), np.column_stack([columns[c] for c in names]).astype(np.float64), names, labels
    )


def outsider_spread(outsiders: Sequence[np.ndarray]) -> np.ndarray:
    """Each column's spread among outsiders: the pooled within-candidate standard deviation, where
    ``outsiders[i]`` holds candidate i's features (rows) under the models it was not fine-tuned on, at least two
    for some candidate. A column that never varies gets spread 1 (its distances stay 0, never NaN)."""
    scatter = sum(((o - o.mean(axis=0)) ** 2).sum(axis=0) for o in outsiders)
    freedom = sum(len(o) - 1 for o in outsiders)
    if freedom < 1:
        raise DataError("the outsiders' spread needs a candidate with at least two models it was not fine-tuned on")
    spread = np.sqrt(np.asarray(scatter, np.float64) / freedom)
    return np.where(spread > 0, spread, 1.0)


def versus_outsiders(features: np.ndarray, references: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Each row's standardised distance from its outsiders (LiRA offline, with a fixed spread per column):
    ``(features - mean over references) / spread``; ``references`` is (rows, models, columns)."""
    distance: np.ndarray = (features - references.mean(axis=1)) / spread
    return distance
