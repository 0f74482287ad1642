"""Reading and writing the open-format tables users hand us and we hand back (Parquet, CSV).

Every reader reports what is wrong with a file in one :class:`~diffmia.errors.DataError` that names the
file; writers are atomic, so a failed run never leaves a partial output file behind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from diffmia.errors import DataError
from diffmia.files import atomic_path
from diffmia.records import BoolArray, FeatureTable, FloatArray

ID_COLUMN = "sample_id"
MEMBER_COLUMN = "member"
METADATA_KEY = b"diffmia"


def read_table(path: str | Path) -> pa.Table:
    """A Parquet (``.parquet``, ``.pq``) or CSV (any other suffix) file as an Arrow table with >= 1 row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    try:
        table = pq.read_table(path) if parquet else pa_csv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        kind = "Parquet" if parquet else "CSV"
        raise DataError(f"{path} could not be read as {kind}: {exc}") from None
    if table.num_rows == 0:
        raise DataError(f"{path} has a header but no rows")
    return table


def _require(table: pa.Table, columns: list[str], path: Path | str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path} has no column {', '.join(repr(c) for c in missing)}; its columns are: "
            f"{', '.join(table.column_names)}"
        )


def membership_labels(table: pa.Table, path: Path | str) -> BoolArray | None:
    """The ``member`` column as booleans (true/false or 1/0); None when it is absent or entirely empty."""
    if MEMBER_COLUMN not in table.column_names or table[MEMBER_COLUMN].null_count == table.num_rows:
        return None
    column = table[MEMBER_COLUMN]
    if column.null_count:
        raise DataError(f"{path}: {column.null_count} of {table.num_rows} rows have no {MEMBER_COLUMN!r} value")
    if pa.types.is_boolean(column.type):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False)
        bad = np.unique(values[~np.isin(values, (0, 1))])
        if bad.size == 0:
            return np.asarray(values == 1, dtype=bool)
        shown = ", ".join(str(v) for v in bad[:5])
        raise DataError(f"{path}: {MEMBER_COLUMN!r} must be true/false or 1/0, found {shown}")
    raise DataError(f"{path}: {MEMBER_COLUMN!r} must be true/false or 1/0, found values of type {column.type}")


def _numeric(table: pa.Table, name: str, path: Path | str) -> FloatArray:
    column = table[name]
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise DataError(f"{path}: column {name!r} must hold numbers, found type {column.type}")
    # CSV readers turn "nan" into a missing value: report both together
    values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    if n_bad:
        raise DataError(f"{path}: column {name!r} has {n_bad} missing, NaN or infinite values")
    return values


def read_scores(path: str | Path, columns: Sequence[str] = ("score",)) -> tuple[dict[str, FloatArray], BoolArray]:
    """Score columns (higher = member) and the membership labels from a CSV or Parquet file."""
    table = read_table(path)
    _require(table, [*columns, MEMBER_COLUMN], path)
    labels = membership_labels(table, path)
    if labels is None:
        raise DataError(f"{path}: the {MEMBER_COLUMN!r} column is empty")
    return {c: _numeric(table, c, path) for c in columns}, labels


def read_feature_table(path: str | Path) -> FeatureTable:
    """A feature table: ``sample_id``, optional ``member``, and numeric feature columns (higher = member)."""
    table = read_table(path)
    _require(table, [ID_COLUMN], path)
    ids = table[ID_COLUMN]
    if ids.null_count:
        raise DataError(f"{path}: {ids.null_count} rows have no {ID_COLUMN!r}")
    sample_ids = tuple(str(v) for v in pc.cast(ids, pa.string()).to_pylist())
    if len(set(sample_ids)) != len(sample_ids):
        raise DataError(f"{path}: {len(sample_ids) - len(set(sample_ids))} duplicated {ID_COLUMN!r} values")
    names = [c for c in table.column_names if c not in (ID_COLUMN, MEMBER_COLUMN)]
    if not names:
        raise DataError(f"{path} has no feature columns besides {ID_COLUMN!r} and {MEMBER_COLUMN!r}")
    X = np.column_stack([_numeric(table, name, path) for name in names])
    return FeatureTable(sample_ids, X, tuple(names), membership_labels(table, path))


def write_feature_table(features: FeatureTable, path: str | Path) -> None:
    """Write a feature table as Parquet (atomically), in the layout :func:`read_feature_table` reads."""
    columns: dict[str, Any] = {ID_COLUMN: list(features.sample_ids)}
    if features.y is not None:
        columns[MEMBER_COLUMN] = features.y
    columns.update({name: features.X[:, i] for i, name in enumerate(features.names)})
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


def write_scores(
    path: str | Path,
    sample_ids: tuple[str, ...],
    scores: Mapping[str, FloatArray],
    labels: BoolArray | None,
    metadata: Mapping[str, Any],
) -> None:
    """Write one score column per attack (higher = member), atomically.

    Parquet (with ``metadata`` as JSON in its schema) unless ``path`` ends in ``.csv``.
    """
    columns: dict[str, Any] = {ID_COLUMN: list(sample_ids)}
    if labels is not None:
        columns[MEMBER_COLUMN] = labels
    columns.update(scores)
    table = pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    with atomic_path(path) as tmp:
        if Path(path).suffix.lower() == ".csv":
            pa_csv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The diffmia metadata written with a Parquet file ({} when there is none)."""
    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return {} if raw is None else dict(json.loads(raw))
