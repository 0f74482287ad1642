"""What the three attacks share: binary labels (the greater label is "member") and predict from the score."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from diffmia.errors import DataError
from diffmia.records import BoolArray, FloatArray


class MembershipAttack(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Base of the attack models: scikit-learn binary classifiers whose score is "higher = member".

    Subclasses implement ``fit`` (calling :meth:`_validate_fit`) and ``decision_function`` (calling
    :meth:`_validate_score`). ``classes_[1]``, the greater of the two labels (``1`` or ``True``), is the
    member class; a sample is predicted a member when its decision score is >= 0.
    """

    decision_function: Callable[[Any], FloatArray]  # each subclass defines it

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _validate_fit(self, X: Any, y: Any) -> tuple[FloatArray, BoolArray]:
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y", raise_unknown=True)
        if y_type != "binary":
            raise ValueError(
                f"Only binary classification is supported (member vs non-member); the target type is {y_type}."
            )
        classes, y_index = np.unique(y, return_inverse=True)
        if classes.size != 2:
            raise DataError(
                f"{type(self).__name__} needs members and non-members to fit, but its training data holds one class "
                f"only: {'members' if bool(classes[0]) else 'non-members'} ({len(y)} rows)"
            )
        self.classes_ = classes
        return X, y_index == 1

    def _validate_score(self, X: Any) -> FloatArray:
        check_is_fitted(self)
        X_checked: FloatArray = validate_data(self, X, reset=False, dtype=np.float64)
        return X_checked

    def predict(self, X: Any) -> Any:
        """The predicted label of each row: ``classes_[1]`` (member) where the decision score is >= 0."""
        member = self.decision_function(X) >= 0  # raises NotFittedError before fit
        return self.classes_[member.astype(int)]
