"""The bundled digits: fine-grained captions, a fixed public/private split, a loadable image folder."""

from __future__ import annotations

from collections import Counter

import numpy as np

from diffmia.assets import CLASSIFIER_PATH
from diffmia.cli import main
from diffmia.data import load_image_folder
from diffmia.lab.classifier import DigitClassifier
from diffmia.lab.data import N_PRIVATE, digits_records, levels_within_class


def test_levels_are_cut_at_per_class_quantiles():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0])
    classes = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(levels_within_class(values, classes, 2), [0, 0, 1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(levels_within_class(values, classes, 4), [0, 1, 2, 3, 0, 1, 2, 3])


def test_captions_are_fine_grained_and_the_split_is_fixed():
    pixels, records = digits_records()
    assert pixels.shape == (1797, 32, 32, 3) and pixels.dtype == np.uint8
    captions = [r["caption"] for r in records]
    counts = Counter(captions)
    own = sum(counts[c] == 1 for c in captions) / len(captions)
    assert own >= 0.90  # measured: 0.950
    assert all(f" handwritten {name}," in r["caption"] for r, name in zip(records, _names(records), strict=True))
    private = [r for r in records if r["split"] == "private"]
    assert len(private) == N_PRIVATE
    public_captions = {r["caption"] for r in records if r["split"] == "public"}
    shared = sum(r["caption"] in public_captions for r in private) / len(private)
    assert shared < 0.10  # a private image's caption rarely occurs in the public data (measured 0.038)
    again = digits_records()[1]
    assert [r["split"] for r in again] == [r["split"] for r in records]


def _names(records):
    names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    return [names[r["label"]] for r in records]


def test_written_folder_loads_and_trains_the_classifier(tmp_path, capsys):
    assert main(["data", "digits", str(tmp_path / "digits")]) == 0
    folder = load_image_folder(tmp_path / "digits", require_captions=True)
    assert len(folder) == 1797
    assert folder.samples[0].id == "digit-0000"
    assert folder.extra["digit-0000"] == {"label": 0, "split": folder.extra["digit-0000"]["split"]}
    assert main(["data", "digits", str(tmp_path / "digits")]) == 2  # never overwrites
    assert "already holds a metadata.jsonl" in capsys.readouterr().err
    assert main(["lab", "classifier", str(tmp_path / "digits"), str(tmp_path / "c.json")]) == 0
    shipped = DigitClassifier.load(CLASSIFIER_PATH)
    rebuilt = DigitClassifier.load(tmp_path / "c.json")
    np.testing.assert_allclose(rebuilt.coef, shipped.coef, atol=1e-6)  # the shipped one is what this rebuilds
