"""Many rows as one statement parameter: a JSON array, read back with json_to_recordset.

The writer's statements carry a batch's rows. Sent as one array per column, each array was
dumped by psycopg in Python, element by element, and a batch of one payment cost as much CPU
in dumping as in everything else the writer does; msgspec encodes the same rows as JSON in
C, and PostgreSQL types them by the record definition in the statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from psycopg.types.json import Json

_ENCODER = msgspec.json.Encoder()


def json_rows(rows: Sequence[Mapping[str, Any]]) -> Json:
    """Rows as one JSON parameter; uuids, dates and datetimes become ISO strings."""
    return Json(rows, dumps=_ENCODER.encode)


def json_records(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Json:
    """Positional rows as json_rows, each named by columns."""
    return json_rows([dict(zip(columns, row, strict=True)) for row in rows])


def record(columns: Sequence[tuple[str, str]]) -> str:
    """The record definition for json_to_recordset: `name type, ...`."""
    return ", ".join(f"{name} {kind}" for name, kind in columns)
