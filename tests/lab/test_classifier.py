"""The shipped digit classifier: JSON weights, accurate on the private digits it never saw."""

from __future__ import annotations

import numpy as np
import pytest

from diffmia.assets import CLASSIFIER_PATH
from diffmia.errors import DataError
from diffmia.lab.classifier import DigitClassifier
from diffmia.lab.data import digits_records


def test_shipped_classifier_reads_private_digits():
    pixels, records = digits_records()
    private = np.array([r["split"] == "private" for r in records])
    labels = np.array([r["label"] for r in records])
    classifier = DigitClassifier.load(CLASSIFIER_PATH)
    accuracy = (classifier.predict(pixels[private]) == labels[private]).mean()
    assert accuracy >= 0.90  # measured 0.952 (5-fold on public: 0.935)


def test_round_trip_and_bad_file(tmp_path):
    coef, intercept = np.arange(640.0).reshape(10, 64) / 640, np.zeros(10)
    DigitClassifier(coef, intercept, 0.5).save(tmp_path / "c.json")
    loaded = DigitClassifier.load(tmp_path / "c.json")
    np.testing.assert_array_equal(loaded.coef, coef)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="cannot read digit classifier"):
        DigitClassifier.load(tmp_path / "bad.json")
