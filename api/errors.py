"""The one place where refusals become HTTP responses.

Native and Resico routes answer RFC 9457 problem+json with a stable `code`; GiftStream's route
answers its documented `{message, timestamp}` shape with status 400.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)

from api.redaction import redact
from ledger.errors import ErrorCode, LedgerError
from projections.reports import ReportRefused


class WriteContention(Exception):
    """A card was written by others on every retry, or the writer is full; retry later."""

    retry_after_seconds = 1


class WriterUnavailable(WriteContention):
    """The ledger writer process cannot be reached; the command was not sent. Retry later."""


class OutcomeUnknown(Exception):
    """The ledger writer stopped after it received the command and before it answered: the
    command may have committed. A retry with the same Idempotency-Key gets the first answer."""


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was first used with a different request."""


class ApiError(Exception):
    """A refusal decided at the API edge (configuration, permissions), not by a card."""

    def __init__(self, code: str, status: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status
        self.detail = detail


def unknown_location(code: str) -> ApiError:
    return ApiError("unknown_location", 422, f"location {code!r} does not exist")


def location_forbidden(code: str | None) -> ApiError:
    return ApiError("location_forbidden", 403, f"this client may not act at location {code!r}")


STATUS_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.CARD_NOT_FOUND: 404,
    ErrorCode.CARD_EXISTS: 409,
}
DEFAULT_LEDGER_STATUS = 422

CODE_BY_HTTP_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def ledger_status(exc: LedgerError) -> int:
    return STATUS_BY_CODE.get(exc.code, DEFAULT_LEDGER_STATUS)


def _problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=status,
        detail=detail,
        type_=f"urn:giftledger:problem:{code}",
        title=code.replace("_", " "),
        extra={"code": code, **extra},
        headers=headers,
    )


def _ledger_problem(exc: LedgerError) -> ProblemDetailsException:
    return _problem(ledger_status(exc), exc.code.value, exc.detail)


def ledger_refusal(exc: LedgerError) -> tuple[int, dict[str, Any], str]:
    """A refusal's status, problem body and media type, to be stored under an Idempotency-Key
    exactly as the problem-details handler would have answered it."""
    problem = _ledger_problem(exc)
    body = {"status": problem.status_code, "type": problem.type_, "title": problem.title,
            "detail": problem.detail, **(problem.extra or {})}  # fmt: skip
    return problem.status_code, body, "application/problem+json"


def _api_problem(exc: ApiError) -> ProblemDetailsException:
    return _problem(exc.status, exc.code, exc.detail)


def _validation_problem(exc: ValidationException) -> ProblemDetailsException:
    # Litestar's detail quotes the request path, and card numbers travel in paths.
    return _problem(422, "validation_failed", redact(str(exc.detail)), errors=exc.extra or [])


def _report_problem(exc: ReportRefused) -> ProblemDetailsException:
    return _problem(422, exc.code, exc.detail)


def _contention_problem(exc: WriteContention) -> ProblemDetailsException:
    code = "writer_unavailable" if isinstance(exc, WriterUnavailable) else "card_busy"
    return _problem(503, code, str(exc), headers={"Retry-After": str(exc.retry_after_seconds)})


def _unknown_outcome_problem(exc: OutcomeUnknown) -> ProblemDetailsException:
    # No Retry-After: a retry without the request's Idempotency-Key could apply it twice.
    return _problem(503, "outcome_unknown", f"{exc}; retry with the same Idempotency-Key")


def _idempotency_problem(exc: IdempotencyKeyReused) -> ProblemDetailsException:
    return _problem(422, "idempotency_key_reused", str(exc))


def _http_problem(exc: HTTPException) -> ProblemDetailsException:
    code = CODE_BY_HTTP_STATUS.get(exc.status_code, "error")
    return ProblemDetailsException(
        status_code=exc.status_code,
        detail=redact(exc.detail),
        title=code.replace("_", " "),
        extra={"code": code},
        headers=exc.headers,
    )


def problem_details_plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_to_problem_detail_map={
                HTTPException: _http_problem,
                ValidationException: _validation_problem,
                LedgerError: _ledger_problem,
                ApiError: _api_problem,
                ReportRefused: _report_problem,
                WriteContention: _contention_problem,
                OutcomeUnknown: _unknown_outcome_problem,
                IdempotencyKeyReused: _idempotency_problem,
            }
        )
    )


# GiftStream's own error shape.

GIFTSTREAM_MESSAGES: dict[ErrorCode | str, str] = {
    ErrorCode.INVALID_AMOUNT: "Data Invalid: Invalid Initial Balance",
    ErrorCode.CARD_EXISTS: "Data Invalid: Card identifier already exists",
    ErrorCode.INVALID_CARD_NUMBER: "Data Invalid: Invalid identifier",
    ErrorCode.UNKNOWN_CURRENCY: "Data Invalid: Currency Code not supported",
    "unknown_location": "Data Invalid: Site not found",
    "location_forbidden": "Forbidden: this client may not act at that site",
}


class GiftStreamError(Exception):
    """A GiftStream refusal that already carries the seed's message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def giftstream_refusal(exc: LedgerError) -> tuple[int, dict[str, Any], str]:
    message = GIFTSTREAM_MESSAGES.get(exc.code, f"Data Invalid: {exc}")
    return 400, giftstream_body(message), "application/json"


def giftstream_body(message: str) -> dict[str, Any]:
    return {"message": message, "timestamp": int(time.time())}


def _giftstream_response(status: int, message: str) -> Response[dict[str, Any]]:
    return Response(giftstream_body(message), status_code=status)


def _giftstream_unavailable(exc: WriteContention | OutcomeUnknown) -> Response[Any]:
    if isinstance(exc, OutcomeUnknown):  # No Retry-After, as for the other APIs.
        return _giftstream_response(503, "Outcome unknown, retry with the same Idempotency-Key")
    response = _giftstream_response(503, "Service busy, please retry")
    response.headers["Retry-After"] = str(exc.retry_after_seconds)
    return response


def giftstream_exception_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, GiftStreamError):
        return _giftstream_response(exc.status, exc.message)
    if isinstance(exc, LedgerError):
        status, body, _ = giftstream_refusal(exc)
        return Response(body, status_code=status)
    if isinstance(exc, ApiError):
        status = 403 if exc.status == 403 else 400
        return _giftstream_response(status, GIFTSTREAM_MESSAGES.get(exc.code, exc.detail))
    if isinstance(exc, IdempotencyKeyReused):
        return _giftstream_response(422, f"Data Invalid: {exc}")
    if isinstance(exc, WriteContention | OutcomeUnknown):
        return _giftstream_unavailable(exc)
    if isinstance(exc, HTTPException):
        response = _giftstream_response(exc.status_code, redact(str(exc.detail)))
        response.headers.update(exc.headers or {})  # Retry-After on 429, for one.
        return response
    raise exc


GIFTSTREAM_EXCEPTION_HANDLERS = {
    GiftStreamError: giftstream_exception_handler,
    LedgerError: giftstream_exception_handler,
    ApiError: giftstream_exception_handler,
    WriteContention: giftstream_exception_handler,
    OutcomeUnknown: giftstream_exception_handler,
    IdempotencyKeyReused: giftstream_exception_handler,
    HTTPException: giftstream_exception_handler,
}
