"""A toy of each extension axis, written as an extension would be: an attack, a target kind and a similarity, each
one class or function here and one registry line in the test that uses them (tests/test_registries.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from diffmia.attacks import MembershipAttack
from diffmia.data import load_image_folder
from diffmia.images import image_digest, load_rgb
from diffmia.records import Query
from diffmia.targets import TargetSection


class MeanAttack(MembershipAttack):
    """Scores a row by the mean of its features, unfitted (it records how many shadow rows it was fitted on)."""

    def fit(self, X: Any, y: Any) -> MeanAttack:
        X, _ = self._validate_fit(X, y)
        self.rows_seen_ = len(X)
        return self

    def decision_function(self, X: Any) -> Any:
        return self._validate_score(X).mean(axis=1)


class Memoriser:
    """A target that gives a member's image back as it was, and any other image inverted (image-to-image only)."""

    def __init__(self, members: str) -> None:
        self.members = {image_digest(load_rgb(s.image_path)) for s in load_image_folder(members).samples}
        self.fingerprint = f"memoriser({len(self.members)} members)"

    def generate(self, queries: Sequence[Query]) -> list[Image.Image]:
        images = []
        for query in queries:
            if query.init_image is None:
                raise ValueError("the memoriser answers image-to-image queries only")
            image = load_rgb(query.init_image)
            images.append(image if image_digest(image) in self.members else ImageOps.invert(image))
        return images


class MemoriserConfig(TargetSection):
    """``[target] kind = "memoriser"``: the folder of the images it memorised."""

    kind: Literal["memoriser"] = "memoriser"
    members: str

    def build(self) -> Memoriser:
        return Memoriser(self.members)


def farthest_coordinate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Minus the largest absolute difference of any coordinate (0 for identical embeddings)."""
    return np.asarray(-np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max(axis=-1))
