"""The string fields every API takes, each with its longest length as a named constant.

Every string a client sends (a body field or a query parameter) has a maximum length, so no
request can make the service hold, log or store more than these few bytes per field. Text is
also refused when it holds control characters: PostgreSQL text cannot hold a NUL at all (it
was a 500), and a line break in a location code or reason only serves log injection.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar.params import Parameter

from api.errors import ApiError

LOCATION_CODE_LENGTH_MAX = 64
CARD_TYPE_NAME_LENGTH_MAX = 64
# Resico's document: "transactionNo (string, max 8 characters)".
TRANSACTION_NO_LENGTH_MAX = 8
REASON_LENGTH_MAX = 200
# An ISO 8601 instant with a time zone and microseconds is 32 characters.
INSTANT_LENGTH_MAX = 64
# The token endpoint's fields; client ids and secrets the CLI makes are far shorter.
GRANT_TYPE_LENGTH_MAX = 64
CLIENT_ID_LENGTH_MAX = 128
CLIENT_SECRET_LENGTH_MAX = 256
SCOPE_LENGTH_MAX = 1024

# No C0 control character and no DEL (msgspec searches the pattern, hence the anchors).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"

LocationCode = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=LOCATION_CODE_LENGTH_MAX, pattern=NO_CONTROL_CHARACTERS),
]
CardTypeName = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=CARD_TYPE_NAME_LENGTH_MAX, pattern=NO_CONTROL_CHARACTERS),
]
TransactionNo = Annotated[
    str, msgspec.Meta(max_length=TRANSACTION_NO_LENGTH_MAX, pattern=NO_CONTROL_CHARACTERS)
]
Reason = Annotated[
    str, msgspec.Meta(min_length=1, max_length=REASON_LENGTH_MAX, pattern=NO_CONTROL_CHARACTERS)
]


# The `as_of` query parameter of time travel and the liability report; see parse_instant.
AsOf = Annotated[
    str | None,
    Parameter(max_length=INSTANT_LENGTH_MAX, description="ISO 8601 instant with a time zone"),
]


def parse_instant(name: str, value: str | None, code: str = "validation_failed") -> datetime:
    """An ISO 8601 instant with a time zone, or a 422 with `code`.

    Query instants are taken as text and parsed here: Litestar's own datetime conversion also
    takes a bare number as a Unix timestamp, which the documents never promised (`as_of=0.5`).
    """
    if not value:
        raise ApiError(code, 422, f"{name} is required (ISO 8601, e.g. ...Z)")
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(code, 422, f"{name} is not ISO 8601: {value!r}") from None
    if instant.tzinfo is None:
        raise ApiError(code, 422, f"{name} needs a time zone, e.g. Z")
    return instant
