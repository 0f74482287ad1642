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


@pytest.mark.slow  # loads the captioner and runs a beam search
def test_several_captions_are_the_best_beams_of_one_search(tmp_path):
    """``captions_per_image = k``: the k best beams of a search k wide, best first, as transformers returns them;
    ``caption`` keeps the best. One caption keeps the greedy decoding."""
    import torch
    from PIL import Image

    from diffmia.captioners import BlipCaptioner
    from diffmia.images import load_rgb
    from diffmia.lab.data import digits_records

    pixels, _ = digits_records()
    samples = [Sample(str(i), tmp_path / f"{i}.png") for i in range(3)]
    for sample, image in zip(samples, pixels[:3], strict=True):
        Image.fromarray(image).save(sample.image_path)
    three = BlipCaptioner("builtin", captions_per_image=3, batch_size=2, max_length=24)  # rows stay with their image
    written = three.caption_all(samples)
    processor, network = three._load()
    inputs = processor(images=[load_rgb(s.image_path) for s in samples], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ids = network.generate(pixel_values=inputs, max_length=24, num_beams=3, num_return_sequences=3, do_sample=False)
    expected = [c.strip() for c in processor.batch_decode(ids, skip_special_tokens=True)]
    assert written == [expected[0:3], expected[3:6], expected[6:9]]
    assert three.caption(samples) == [w[0] for w in written] and all(len(set(w)) > 1 for w in written)
    one = BlipCaptioner("builtin", max_length=24)
    one._loaded = (processor, network)  # the same weights, loaded once
    with torch.no_grad():
        ids = network.generate(pixel_values=inputs, max_length=24, num_beams=1, do_sample=False)
    greedy = [c.strip() for c in processor.batch_decode(ids, skip_special_tokens=True)]
    assert one.caption_all(samples) == [[c] for c in greedy] and "captions=3" in three.fingerprint
    assert "captions" not in BlipCaptioner("builtin").fingerprint
