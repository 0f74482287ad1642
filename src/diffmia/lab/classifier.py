"""A small digit classifier for measuring generation quality: does a generation show the prompted digit?

Multinomial logistic regression on the 8x8 grey-level image (the digits' native resolution), trained on the
public part of the bundled digits. Its weights ship as JSON: no pickle is ever loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from diffmia.data import load_image_folder
from diffmia.errors import DataError
from diffmia.files import atomic_path
from diffmia.images import load_rgb
from diffmia.lab.pretrain import select_split


def digit_features(images: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
    """(n, 64) features in [0, 1]: each image in grey, box-downsampled to 8x8."""
    if isinstance(images, np.ndarray):
        images = [Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images]
    rows = [np.asarray(im.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=np.float64) / 255.0 for im in images]
    return np.stack(rows).reshape(len(rows), 64)


class DigitClassifier:
    """Logistic regression digit classifier with JSON weights."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, accuracy: float | None = None) -> None:
        self.coef, self.intercept, self.accuracy = coef, intercept, accuracy

    @classmethod
    def fit(cls, images: Sequence[Image.Image], labels: Sequence[int], seed: int = 0) -> DigitClassifier:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_score

        X, y = digit_features(images), np.asarray(labels)
        model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
        accuracy = float(cross_val_score(model, X, y, cv=5).mean())
        model.fit(X, y)
        return cls(model.coef_, model.intercept_, accuracy)

    def logits(self, images: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
        """(n, 10) class scores: the features of the Fréchet distance between generated and real digits."""
        return np.asarray(digit_features(images) @ self.coef.T + self.intercept)

    def predict(self, images: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
        return np.asarray(self.logits(images).argmax(axis=1))

    def save(self, path: str | Path) -> None:
        data = {
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "cv_accuracy": self.accuracy,
        }
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> DigitClassifier:
        try:
            data = json.loads(Path(path).read_text())
            return cls(np.asarray(data["coef"]), np.asarray(data["intercept"]), data.get("cv_accuracy"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"cannot read digit classifier {path}: {exc}") from None


def train_digit_classifier(data_dir: str | Path, out: str | Path, split: str | None = "public") -> DigitClassifier:
    """Fit the digit classifier on a labelled image folder's ``split`` part and save it to ``out``."""
    folder = load_image_folder(data_dir)
    samples = select_split(folder.samples, folder.extra, split)
    labels = [folder.extra[s.id].get("label") for s in samples]
    if any(not isinstance(label, int) or not 0 <= label <= 9 for label in labels):
        raise DataError(f"{data_dir}: every image needs an integer 'label' from 0 to 9 in its metadata")
    images = []
    for sample in samples:
        images.append(load_rgb(sample.image_path))
    classifier = DigitClassifier.fit(images, [int(x) for x in labels if x is not None])
    classifier.save(out)
    return classifier


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b`` (as FID, in any feature space):
    |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))."""
    from scipy.linalg import sqrtm

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise DataError(f"Fréchet distance needs two sets of >= 2 feature rows of one width, got {a.shape}, {b.shape}")
    mean = np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = sqrtm(ca @ cb)
    return float(mean + np.trace(ca) + np.trace(cb) - 2 * np.trace(np.real(root)))
