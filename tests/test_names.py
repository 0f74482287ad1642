"""The shared vocabulary: each identifier written and read back in one place, as run directories hold them."""

from __future__ import annotations

import pytest

from diffmia.errors import DataError
from diffmia.names import (
    Channel,
    Column,
    Mode,
    PromptSource,
    Reference,
    Relation,
    against,
    channel_of,
    in_channel,
    reference_of,
)


def test_channels_are_written_as_the_features_name_them_and_read_back():
    assert [str(c) for c in (Channel(Mode.TEXT2IMG), Channel(Mode.IMG2IMG), Channel(Mode.IMG2IMG, 0.3))] == [
        "text2img",
        "img2img",
        "img2img@0.3",
    ]
    assert Channel.parse("img2img@0.3") == Channel(Mode.IMG2IMG, 0.3) and Channel.parse("text2img").strength is None
    with pytest.raises(DataError, match="'combined' is not a query channel"):
        Channel.parse("combined")


def test_prompt_sources_name_their_captioners_d_prime():
    assert PromptSource.captioner(Relation.OVERLAP) == "captioner-overlap"
    assert PromptSource("captioner-disjoint").relation is Relation.DISJOINT and PromptSource.GIVEN.relation is None
    assert PromptSource.CAPTIONER_OVERLAP.words == "captioner on D' overlap"
    assert PromptSource.GIVEN.words == "given caption"


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("pixels/l2/pooled/mean", Column("pixels", "l2", "pooled", "mean")),
        ("deit/cosine/token017/max", Column("deit", "cosine", "token", "max", 17)),
        (
            "img2img@0.3/deit/l2/unit0767/std-vs-outsiders",
            Column("deit", "l2", "unit", "std", 767, Reference.OUTSIDERS, "img2img@0.3"),
        ),
        (
            "text2img/pixels/ssim/pooled/mean-minus-base",
            Column("pixels", "ssim", "pooled", "mean", None, Reference.BASE, "text2img"),
        ),
    ],
)
def test_a_column_name_is_read_back_as_the_column_that_writes_it(name, parsed):
    assert Column.parse(name) == parsed and str(parsed) == name
    assert str(parsed.feature) == name.partition("/")[2] if parsed.channel else str(parsed.feature) == name


def test_names_that_are_no_similarity_column_parse_to_none_and_a_family_of_columns_matches_its_members():
    for name in ("blind/mean", "blind/deit/003", "deit/l2/token1/mean", "deit/l2/pooled017/mean", "a/b/c"):
        assert Column.parse(name) is None, name
    every_token = Column("deit", "l2", "token", "mean")
    assert str(every_token) == "deit/l2/token###/mean"
    assert every_token.matches(Column("deit", "l2", "token", "mean", 5))
    assert not every_token.matches(Column("deit", "l2", "token", "max", 5)) and not every_token.matches(every_token)
    assert Column("pixels", "l2", "pooled", "mean").matches(Column("pixels", "l2", "pooled", "mean"))


def test_a_columns_channel_and_reference_are_written_and_read_in_one_place():
    name = in_channel("img2img@0.5", against("pixels/l2/pooled/mean", Reference.BASE))
    assert name == "img2img@0.5/pixels/l2/pooled/mean-minus-base"
    assert channel_of(name) == ("img2img@0.5", "pixels/l2/pooled/mean-minus-base")
    assert reference_of(name) is Reference.BASE and reference_of("x/y/pooled/mean") is Reference.NONE
    assert reference_of(against("x", Reference.OUTSIDERS)) is Reference.OUTSIDERS
