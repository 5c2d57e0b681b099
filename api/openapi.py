"""The OpenAPI document's shared parts, added in one place after Litestar has built it.

Litestar documents each handler's success answer. What every route shares is added here, so no
route decorator has to repeat it: the bearer security scheme (and `security: []` on the public
paths), the error answers of each API in that API's own shape, and links that lead from a
created card or hold to the operations on it (schemathesis follows them in stateful tests).
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar

# Litestar (pinned) builds the served document once and caches the JSON-ready dict; its public
# `app.openapi_schema` gives the typed objects only. tests/e2e/test_openapi.py fails if an
# upgrade moves this.
from litestar._openapi.plugin import OpenAPIPlugin

from api.authz import is_public_path
from api.fields import INSTANT_LENGTH_MAX
from api.giftstream import FIELDS as GIFTSTREAM_FIELDS
from api.giftstream import INTEGER_DIGITS_MAX
from api.ledger_export import MEDIA_TYPES, ExportFormat, ExportKind
from ledger.card import CARD_NUMBER_LENGTH_MAX

BEARER_SCHEME = "bearer"

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is stable and clients switch on it.",
    "required": ["status", "title", "detail", "code"],
    "properties": {
        "status": {"type": "integer"},
        "type": {"type": "string"},
        "title": {"type": "string"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "array"},
    },
}
GIFTSTREAM_ERROR = {
    "type": "object",
    "description": "GiftStream's documented error shape.",
    "required": ["message", "timestamp"],
    "properties": {"message": {"type": "string"}, "timestamp": {"type": "integer"}},
}
OAUTH_ERROR = {
    "type": "object",
    "description": "RFC 6749 section 5.2 error.",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}

ERROR_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, invalid or expired bearer token",
    403: "The client lacks the scope or location, or the transport is not secure",
    404: "No such card or hold",
    405: "Method not allowed",
    409: "The card already exists",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "The request is well formed but refused; `code` says why",
    429: "Rate limited; see Retry-After",
    503: "Busy or not ready; see Retry-After",
}
# Statuses every authenticated route may answer, whatever it does: a handler that cannot give
# one of them never does, and declaring it costs a client nothing.
API_ERROR_STATUSES = (400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 503)
GIFTSTREAM_ERROR_STATUSES = (400, 401, 403, 413, 422, 429, 503)
TOKEN_ERROR_STATUSES = (400, 401, 403)
# The limits and the body-size guard answer these as problems before the token endpoint runs.
TOKEN_PROBLEM_STATUSES = (413, 429)
PUBLIC_PROBLEM_STATUSES = (405, 429, 503)

GIFTSTREAM_PATH = "/giftcard"
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path, not a secret.
TEXT_CONTENT = {
    "/metrics": ("text/plain",),
    "/ping": ("text/plain",),
    "/v1/exports/ledger": tuple(MEDIA_TYPES.values()),
}
# Reports answer CSV with ?format=csv.
CSV_PATH_PREFIX = "/v1/reports/"

NATIVE_CARD = "/v1/cards/{number}"
RESICO_CARD = "/api/giftcards/v1/cards/{card_id}"
_CARD_FROM_BODY = {"number": "$response.body#/number"}
_CARD_FROM_HOLD = {"number": "$response.body#/card/number", "hold_id": "$response.body#/hold_id"}
_RESICO_CARD = {"card_id": "$request.path.card_id"}
# operation (path, method, status) -> {link name: (target path, target method, parameters)}
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("/v1/cards", "post", "201"): {
        "GetCard": (NATIVE_CARD, "get", _CARD_FROM_BODY),
        "Redeem": (f"{NATIVE_CARD}/redeem", "post", _CARD_FROM_BODY),
        "Hold": (f"{NATIVE_CARD}/holds", "post", _CARD_FROM_BODY),
        "Load": (f"{NATIVE_CARD}/load", "post", _CARD_FROM_BODY),
        "Refund": (f"{NATIVE_CARD}/refund", "post", _CARD_FROM_BODY),
        "Block": (f"{NATIVE_CARD}/block", "post", _CARD_FROM_BODY),
        "Unblock": (f"{NATIVE_CARD}/unblock", "post", _CARD_FROM_BODY),
        "Events": (f"{NATIVE_CARD}/events", "get", _CARD_FROM_BODY),
    },
    (f"{NATIVE_CARD}/holds", "post", "201"): {
        "Capture": (f"{NATIVE_CARD}/holds/{{hold_id}}/capture", "post", _CARD_FROM_HOLD),
        "Void": (f"{NATIVE_CARD}/holds/{{hold_id}}/void", "post", _CARD_FROM_HOLD),
    },
    (RESICO_CARD, "post", "200"): {
        "GetResicoCard": (RESICO_CARD, "get", _RESICO_CARD),
        "Reserve": ("/api/giftcards/v1/reserve/{card_id}", "post", _RESICO_CARD),
        "CancelReserve": ("/api/giftcards/v1/cancelreserve/{card_id}", "get", _RESICO_CARD),
        "GetNativeCard": (NATIVE_CARD, "get", {"number": "$request.path.card_id"}),
    },
    (GIFTSTREAM_PATH, "post", "200"): {
        "GetNativeCard": (NATIVE_CARD, "get", {"number": "$response.body#/data/cardId"}),
    },
}


_INTEGER = {"type": "integer", "minimum": 0, "maximum": 10**INTEGER_DIGITS_MAX - 1}
_DIGITS = {"type": "string", "pattern": rf"^[0-9]{{1,{INTEGER_DIGITS_MAX}}}$"}
GIFTSTREAM_BODY = {
    "type": "object",
    "description": "GiftStream's fields, as JSON (numbers or strings of digits) or form fields.",
    "required": ["cardType", "currencyCode"],
    "additionalProperties": False,
    "properties": {
        "cardType": {"oneOf": [{"type": "integer", "enum": [1, 2]}, {"enum": ["1", "2"]}]},
        "currencyCode": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 999}, _DIGITS]},
        "expiry": {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "identifier": {"type": "string", "maxLength": CARD_NUMBER_LENGTH_MAX},
        "initialBalance": {"type": "string", "pattern": r"^[0-9]{1,5}(\.[0-9]{1,2})?$"},
        "siteId": {"oneOf": [_INTEGER, _DIGITS]},
    },
}
assert GIFTSTREAM_BODY["properties"].keys() == GIFTSTREAM_FIELDS, "the document lists every field"
# Bodies that the handlers read themselves, so Litestar cannot document them.
REQUEST_BODIES = {
    (GIFTSTREAM_PATH, "post"): {
        "required": True,
        "content": {
            "application/json": {"schema": GIFTSTREAM_BODY},
            "application/x-www-form-urlencoded": {"schema": GIFTSTREAM_BODY},
        },
    },
    ("/v1/reconciliations", "post"): {
        "required": True,
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
}
INSTANT = {"type": "string", "format": "date-time", "maxLength": INSTANT_LENGTH_MAX}
# Query parameters the handlers check themselves, to answer their own stable codes.
EXPORT_PARAMETERS = {
    "from": {"required": True, "schema": INSTANT},
    "to": {"required": True, "schema": INSTANT},
    "format": {"schema": {"type": "string", "enum": [f.value for f in ExportFormat]}},
    "kind": {"schema": {"type": "string", "enum": [k.value for k in ExportKind]}},
}
INSTANT_PARAMETER = {"schema": INSTANT}
PARAMETERS = {
    "/v1/exports/ledger": EXPORT_PARAMETERS,
    "/v1/exports/ledger/manifest": EXPORT_PARAMETERS,
    "/v1/reports/liability": {"as_of": INSTANT_PARAMETER},
    NATIVE_CARD: {"as_of": INSTANT_PARAMETER},
}


def _refine_parameters(path: str, method: str, operation: dict[str, Any]) -> None:
    if (path, method) in REQUEST_BODIES:
        operation["requestBody"] = REQUEST_BODIES[path, method]
    overrides = PARAMETERS.get(path, {})
    for parameter in operation.get("parameters", []):
        override = overrides.get(parameter["name"]) if parameter.get("in") == "query" else None
        if override:
            parameter.update(override)


def _error(status: int, media_type: str, schema_name: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema_name}"}
    return {"description": ERROR_DESCRIPTIONS[status], "content": {media_type: {"schema": ref}}}


def _errors_for(path: str) -> dict[int, dict[str, Any]]:
    if path == TOKEN_PATH:
        oauth = {s: _error(s, "application/json", "OAuthError") for s in TOKEN_ERROR_STATUSES}
        return oauth | {s: _error(s, PROBLEM_MEDIA_TYPE, "Problem") for s in TOKEN_PROBLEM_STATUSES}
    if is_public_path(path):
        return {s: _error(s, PROBLEM_MEDIA_TYPE, "Problem") for s in PUBLIC_PROBLEM_STATUSES}
    if path == GIFTSTREAM_PATH:
        return {
            s: _error(s, "application/json", "GiftStreamError") for s in GIFTSTREAM_ERROR_STATUSES
        }
    return {s: _error(s, PROBLEM_MEDIA_TYPE, "Problem") for s in API_ERROR_STATUSES}


def _link(target: str, method: str, parameters: dict[str, str]) -> dict[str, Any]:
    # operationRef (JSON pointer to the target operation) needs no operationId to be stable.
    pointer = target.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{pointer}/{method}", "parameters": parameters}


def _success_content(path: str, responses: dict[str, Any]) -> None:
    for status, response in responses.items():
        if not status.startswith("2") or "content" not in response:
            continue
        content = response["content"]
        if path in TEXT_CONTENT:
            schema = {"type": "string"}
            response["content"] = {media: {"schema": schema} for media in TEXT_CONTENT[path]}
        elif path.startswith(CSV_PATH_PREFIX):
            content["text/csv"] = {"schema": {"type": "string"}}


def refine(document: dict[str, Any]) -> None:
    """Add the shared parts to a built OpenAPI document (a JSON-ready dict), in place."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(
        Problem=PROBLEM, GiftStreamError=GIFTSTREAM_ERROR, OAuthError=OAUTH_ERROR
    )
    components["securitySchemes"] = {
        BEARER_SCHEME: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    }
    document["security"] = [{BEARER_SCHEME: []}]
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            _refine_parameters(path, method, operation)
            responses = operation.setdefault("responses", {})
            _success_content(path, responses)
            for status, response in _errors_for(path).items():
                responses[str(status)] = response
            if is_public_path(path):
                operation["security"] = []
            for code, response in responses.items():
                links = LINKS.get((path, method, code))
                if links:
                    response["links"] = {name: _link(*target) for name, target in links.items()}


def refine_openapi(app: Litestar) -> None:
    """Build the app's OpenAPI document now and refine it; it is served from this cache."""
    refine(app.plugins.get(OpenAPIPlugin).provide_openapi_schema())
