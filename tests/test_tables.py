"""Tables: round trips, label parsing, atomic writes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffmia.errors import DataError
from diffmia.records import FeatureTable
from diffmia.tables import read_feature_table, read_scores, write_feature_table


def test_feature_table_round_trip(tmp_path):
    table = FeatureTable(("a", "b"), np.array([[1.0, -2.0], [3.5, 4.0]]), ("x/cos", "x/l2"), np.array([True, False]))
    write_feature_table(table, tmp_path / "f.parquet")
    back = read_feature_table(tmp_path / "f.parquet")
    assert (back.sample_ids, back.names) == (table.sample_ids, table.names)
    np.testing.assert_array_equal(back.X, table.X)
    np.testing.assert_array_equal(back.y, table.y)


@pytest.mark.parametrize(
    ("member", "expected"),
    [([True, False], [True, False]), ([1, 0], [True, False]), ([1.0, 0.0], [True, False])],
)
def test_member_column_types(tmp_path, member, expected):
    pq.write_table(pa.table({"score": [0.3, 0.1], "member": member}), tmp_path / "s.parquet")
    _, labels = read_scores(tmp_path / "s.parquet")
    np.testing.assert_array_equal(labels, expected)


def test_partly_missing_labels_and_non_numeric_scores(tmp_path):
    pq.write_table(pa.table({"score": [0.3, 0.1], "member": [True, None]}), tmp_path / "a.parquet")
    with pytest.raises(DataError, match="1 of 2 rows have no 'member' value"):
        read_scores(tmp_path / "a.parquet")
    pq.write_table(pa.table({"score": ["high", "low"], "member": [1, 0]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match="must hold numbers, found type string"):
        read_scores(tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="could not be read as Parquet"):
        read_scores(tmp_path / "c.parquet")


def test_feature_table_rejects_inconsistent_shapes():
    with pytest.raises(DataError, match=r"X has shape \(2, 2\) but there are 3 sample ids"):
        FeatureTable(("a", "b", "c"), np.zeros((2, 2)), ("x", "y"))
    with pytest.raises(DataError, match="sample ids are not unique"):
        FeatureTable(("a", "a"), np.zeros((2, 1)), ("x",))
