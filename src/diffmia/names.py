"""The small vocabulary every stage shares, as types: who a score was measured on, how D' relates to the target's
members, where a prompt comes from, which query channel an image answers, and the name of a feature column.

Each has one way to be written and one way to be read back (``str()`` and ``parse``), and writes exactly the
strings that run directories have always held (``"captioner-overlap"``, ``"img2img@0.3"``,
``"text2img/pixels/l2/pooled/mean-minus-base"``), so results of earlier versions still load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum

from diffmia.errors import DataError


class Role(StrEnum):
    """The model a score set was measured on: the target, or a control queried the same way (the un-fine-tuned base
    model), or none at all (the blind control: the query images alone)."""

    TARGET = "target"
    BASE = "base"
    BLIND = "blind"


class Relation(StrEnum):
    """How the attacker's auxiliary set D' relates to the target's members (in the order D' sets are drawn)."""

    OVERLAP = "overlap"  # part of D' are real target members (scenarios I, II)
    DISJOINT = "disjoint"  # D' holds none of the target's data (scenarios III, IV)


class PromptSource(StrEnum):
    """Where the prompts of a query come from: the given captions, the captioner fine-tuned on a D' (an audit), or
    the captioner as it is (``diffmia provenance``, which has no D')."""

    GIVEN = "given"
    CAPTIONER_OVERLAP = "captioner-overlap"
    CAPTIONER_DISJOINT = "captioner-disjoint"
    CAPTIONER = "captioner"

    @classmethod
    def captioner(cls, relation: Relation) -> PromptSource:
        return cls(f"captioner-{relation}")

    @property
    def relation(self) -> Relation | None:
        """The D' whose captioner writes these prompts (None for the given captions and the plain captioner)."""
        return Relation(self.removeprefix("captioner-")) if self.startswith("captioner-") else None

    @property
    def words(self) -> str:
        """For logs: "given caption", "captioner on D' overlap" or "captioner"."""
        if self is PromptSource.GIVEN:
            return "given caption"
        return "captioner" if self.relation is None else f"captioner on D' {self.relation}"


class Mode(StrEnum):
    """How a query asks for an image: from its prompt alone, or from the query image noised to a strength."""

    TEXT2IMG = "text2img"
    IMG2IMG = "img2img"


# evidence a score set can rest on besides one query channel: all channels together, the model's weights (gray-box
# baselines), or no query channel at all (caption-free baselines, the blind control)
COMBINED = "combined"
WEIGHTS = "weights"
NO_CHANNEL = "none"


@dataclass(frozen=True, order=True)
class Channel:
    """A query channel: text-to-image, or image-to-image at one strength (named ``img2img@S`` when an audit queries
    several strengths, plain ``img2img`` when it queries one)."""

    mode: Mode
    strength: float | None = None

    def __str__(self) -> str:
        return str(self.mode) if self.strength is None else f"{self.mode}@{self.strength:g}"

    @classmethod
    def parse(cls, text: str) -> Channel:
        mode, at, strength = text.partition("@")
        try:
            return cls(Mode(mode), float(strength) if at else None)
        except ValueError:
            raise DataError(f"{text!r} is not a query channel (text2img, img2img or img2img@STRENGTH)") from None


def in_channel(channel: Channel | str, feature: str) -> str:
    """A feature's column in one channel's part of a table: ``channel/feature``."""
    return f"{channel}/{feature}"


def channel_of(column: str) -> tuple[str, str]:
    """The channel of a table's column and the feature it holds (:func:`in_channel` read back)."""
    channel, _, feature = column.partition("/")
    return channel, feature


class Reference(StrEnum):
    """What a calibrated feature is measured against: nothing (the raw feature), the base model's twin
    (features.calibrate) or the outsider shadows (features.outsiders). Written after the aggregation."""

    NONE = ""
    BASE = "minus-base"
    OUTSIDERS = "vs-outsiders"


def against(column: str, reference: Reference) -> str:
    """The name of ``column`` measured against ``reference`` (``...mean-minus-base``)."""
    return f"{column}-{reference}"


def reference_of(column: str) -> Reference:
    """What a column is measured against (:func:`against` read back): the raw feature unless it says otherwise."""
    return next((r for r in Reference if r and column.endswith(f"-{r}")), Reference.NONE)


NUMBERED = {"token": 3, "unit": 4}  # the digits that number a per-token or per-unit column's token or hidden unit
_COLUMN = re.compile(
    r"(?:(?P<channel>[^/]+)/)?(?P<encoder>[^/]+)/(?P<similarity>[^/]+)/(?P<granularity>pooled|token|unit)"
    r"(?P<index>\d+)?/(?P<aggregation>[^/-]+)(?:-(?P<reference>minus-base|vs-outsiders))?"
)


@dataclass(frozen=True)
class Column:
    """A feature column, ``[channel/]encoder/similarity/granularity[index]/aggregation[-reference]``: the similarity
    of a query with its generations under one encoder, pooled or per token (``token017``) or hidden unit
    (``unit0017``), aggregated over the generations, and measured raw or against a reference. Without a channel it
    names the feature in every channel (as ``[attacks.threshold] reduce`` does); per token or unit without an index
    it names all of them (written ``token###``)."""

    encoder: str
    similarity: str
    granularity: str
    aggregation: str
    index: int | None = None
    reference: Reference = Reference.NONE
    channel: str | None = None

    def __str__(self) -> str:
        digits = NUMBERED.get(self.granularity, 0)
        number = "#" * digits if self.index is None else f"{self.index:0{digits}d}"
        suffix = f"-{self.reference}" if self.reference else ""
        name = f"{self.encoder}/{self.similarity}/{self.granularity}{number}/{self.aggregation}{suffix}"
        return name if self.channel is None else f"{self.channel}/{name}"

    @property
    def feature(self) -> Column:
        """The same column in every channel (without its channel)."""
        return replace(self, channel=None)

    def matches(self, other: Column) -> bool:
        """Whether ``other`` is this column, or one of its tokens or units when this one names all of them."""
        if self.granularity in NUMBERED and self.index is None:
            return other.index is not None and replace(other, index=None) == self
        return other == self

    @classmethod
    def parse(cls, name: str) -> Column | None:
        """The column a feature name writes, or None where it is no similarity feature (a blind control's column,
        a table of someone else's)."""
        found = _COLUMN.fullmatch(name)
        if found is None:
            return None
        index, granularity = found["index"], found["granularity"]
        if (index is None) != (granularity not in NUMBERED) or (index and len(index) != NUMBERED[granularity]):
            return None
        return cls(
            found["encoder"],
            found["similarity"],
            granularity,
            found["aggregation"],
            None if index is None else int(index),
            Reference(found["reference"] or ""),
            found["channel"],
        )
