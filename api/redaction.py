"""No secret in a log line or an error message: card numbers masked, tokens and secrets hidden.

Card numbers travel in URL paths (`/cards/{number}`, `/reserve/{number}`), so every access log
line and every error that quotes the request path would otherwise carry a bearer secret.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from ledger.card import mask_card_number

# The path segment after these names is a card number in every API this service serves.
_CARD_IN_PATH = re.compile(r"(?<=/)(cards|reserve|cancelreserve)/([^/?#\s\"']+)")
# Any other long digit run (a number in a mistyped path, or in a database error) is masked
# too; 12 digits is the shortest card number masking would leave a last 4 of.
_LONG_DIGIT_RUN = re.compile(r"\d{12,}")
_JWT = re.compile(r"eyJ[\w-]*\.[\w-]*\.[\w-]*")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"']+")
_SECRET_PARAMETER = re.compile(
    r"(?i)\b((?:client_secret|access_token|refresh_token|token|secret|password)=)[^&\s\"']+"
)
REDACTED = "[redacted]"
# The access log writes route templates (`/cards/{number}`), and redacts the path of a request
# no route matched itself; its records skip the factory's second pass on every request.
ACCESS_LOGGER = "giftledger.access"


def _mask_path_number(match: re.Match[str]) -> str:
    return f"{match.group(1)}/{mask_card_number(match.group(2))}"


def redact(text: str) -> str:
    """The text with card numbers masked to their last 4 characters and credentials hidden."""
    text = _JWT.sub(REDACTED, text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    text = _SECRET_PARAMETER.sub(rf"\g<1>{REDACTED}", text)
    text = _CARD_IN_PATH.sub(_mask_path_number, text)
    return _LONG_DIGIT_RUN.sub(lambda m: mask_card_number(m.group(0)), text)


def _redacted(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _redact_record(record: logging.LogRecord) -> None:
    record.msg = _redacted(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_redacted(arg) for arg in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {key: _redacted(arg) for key, arg in record.args.items()}
    if record.exc_info and record.exc_info[0] is not None:
        # Formatters reuse exc_text when it is set, so the traceback is written redacted.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))


def install_log_redaction() -> None:
    """Redact every log record of this process as it is created.

    A record factory, not a handler filter: uvicorn and Litestar each configure their own
    handlers (some after the app is built), and a factory sees every record of every logger
    before any of them does. Installing twice is harmless.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name != ACCESS_LOGGER:
            _redact_record(record)
        return record

    redacting_factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
