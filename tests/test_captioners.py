"""Captioners: given captions pass through; a missing one is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffmia.captioners import GivenCaptions
from diffmia.errors import DataError
from diffmia.records import Sample


def test_given_captions():
    samples = [Sample("a", Path("a.png"), "a seven"), Sample("b", Path("b.png"), "a one")]
    assert GivenCaptions().caption(samples) == ["a seven", "a one"]
    with pytest.raises(DataError, match=r"1 samples have no caption \(c\)"):
        GivenCaptions().caption([*samples, Sample("c", Path("c.png"), " ")])
