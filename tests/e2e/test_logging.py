"""Every answer names its request in X-Request-ID, and that request's JSON log lines carry it."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from api.cli import main
from api.logs import REQUEST_ID, ContextFilter, JsonFormatter, TextFormatter
from api.request_context import REQUEST_ID_LENGTH_MAX
from api.settings import Settings
from api.tracing import TracingUnavailableError, check_tracing_available

UNKNOWN = "5000000000009999"
GENERATED = re.compile(r"[0-9a-f]{32}")


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def service_text(self) -> str:
        """Every line but the test client's own (httpx logs the URLs it requests)."""
        return "\n".join(json.dumps(line) for line in self.lines() if line["logger"] != "httpx")

    def access(self, request_id: str) -> dict:
        [line] = [
            line for line in self.lines()
            if line["logger"] == "giftledger.access" and line.get("request_id") == request_id
        ]  # fmt: skip
        return line


@pytest.fixture
def captured() -> Iterator[Captured]:
    """The service's log lines as its stderr handler writes them (same formatter and filter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield Captured(stream)
    finally:
        root.removeHandler(handler)


async def test_a_success_gets_a_generated_id_and_one_access_line_with_it(http, world, captured):
    body = {"card_type": "dynamic19", "amount_minor": 500, "number": "7100000000000000011"}
    response = await http.post("/v1/cards", json=body, headers=world.pos.headers)
    assert response.status_code == 201
    request_id = response.headers["x-request-id"]
    assert GENERATED.fullmatch(request_id)
    line = captured.access(request_id)
    assert {k: line[k] for k in ("level", "method", "path", "status", "client_id")} == {
        "level": "INFO", "method": "POST", "path": "/v1/cards", "status": 201,
        "client_id": world.pos.client_id,
    }  # fmt: skip
    assert 0 < line["duration_ms"] < 60_000
    assert line["timestamp"].endswith("+00:00")
    assert line["message"].startswith("POST /v1/cards 201 ")
    assert line["message"].endswith(f"ms client={world.pos.client_id}")


async def test_the_incoming_id_is_echoed_and_logged(http, world, captured):
    request_id = "pos-7:0a1B.c_d-" + "x" * 100
    headers = {**world.pos.headers, "X-Request-ID": request_id}
    response = await http.get(f"/v1/cards/{UNKNOWN}", headers=headers)
    assert response.status_code == 404
    assert response.json()["code"] == "card_not_found"
    assert response.headers["x-request-id"] == request_id
    line = captured.access(request_id)
    # The route template, never the card number.
    assert (line["path"], line["status"]) == ("/v1/cards/{number}", 404)
    assert UNKNOWN not in captured.service_text()


@pytest.mark.parametrize(
    "incoming",
    ["x" * (REQUEST_ID_LENGTH_MAX + 1), "has space", "line\\nbreak", 'quote"d', "", "ünï"],
)
async def test_an_insane_incoming_id_is_replaced(http, incoming):
    response = await http.get(
        "/health/live", headers=[(b"X-Request-ID", incoming.encode("utf-8"))]
    )
    assert response.status_code == 200
    assert GENERATED.fullmatch(response.headers["x-request-id"])


async def test_refusals_and_unmatched_paths_carry_the_header(http, world, captured):
    unauthenticated = await http.get(f"/v1/cards/{UNKNOWN}", headers={"X-Request-ID": "r-401"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["x-request-id"] == "r-401"
    mistyped = await http.get(f"/v1/card/{UNKNOWN}", headers={"X-Request-ID": "r-404"})
    assert mistyped.status_code == 404
    assert mistyped.headers["content-type"].startswith("application/problem+json")
    assert mistyped.headers["x-request-id"] == "r-404"
    # A path no route matched is logged as it came, redacted.
    assert captured.access("r-404")["path"] == "/v1/card/************9999"
    assert captured.access("r-401")["status"] == 401
    assert "client_id" not in captured.access("r-401")
    assert UNKNOWN not in captured.service_text()


async def test_a_client_over_its_not_found_budget_gets_429_with_the_header(http, world):
    headers = world.pos.headers
    for _ in range(20):
        await http.get(f"/v1/cards/{UNKNOWN}", headers=headers)
    refused = await http.get(f"/v1/cards/{UNKNOWN}", headers={**headers, "X-Request-ID": "r-429"})
    assert refused.status_code == 429
    assert refused.headers["x-request-id"] == "r-429"


def test_a_log_line_made_while_serving_a_request_carries_its_id(captured):
    token = REQUEST_ID.set("r-inner")
    try:
        logging.getLogger("giftledger.test").warning("card %s refused", UNKNOWN)
    finally:
        REQUEST_ID.reset(token)
    logging.getLogger("giftledger.test").warning("outside any request")
    inner, outside = captured.lines()[-2:]
    assert (inner["request_id"], inner["message"]) == ("r-inner", "card ************9999 refused")
    assert "request_id" not in outside


def test_an_exception_is_one_json_line_with_its_traceback(captured):
    try:
        raise ValueError(f"bad card {UNKNOWN}")
    except ValueError:
        logging.getLogger("giftledger.test").exception("failed")
    [line] = captured.lines()[-1:]
    assert line["level"] == "ERROR"
    assert "ValueError: bad card ************9999" in line["exception"]
    assert len(captured.stream.getvalue().splitlines()) == len(captured.lines())


def test_the_text_format_names_the_request_too():
    record = logging.LogRecord("giftledger.access", logging.INFO, "", 0, "GET / 200", (), None)
    record.request_id = "r-1"
    assert TextFormatter().format(record).endswith(" INFO giftledger.access [r-1] GET / 200")


def test_log_settings_come_from_the_environment_and_are_checked():
    env = {"GIFTLEDGER_LOG_FORMAT": "TEXT", "GIFTLEDGER_LOG_LEVEL": "warning"}
    settings = Settings.from_env(env)
    assert (settings.log_format, settings.log_level, settings.otel_enabled) == (
        "text", "WARNING", False,
    )  # fmt: skip
    assert Settings.from_env({}).log_format == "json"
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}).otel_enabled
    assert Settings.from_env({"GIFTLEDGER_OTEL_ENABLED": "1"}).otel_enabled
    with pytest.raises(ValueError, match="GIFTLEDGER_LOG_FORMAT"):
        Settings.from_env({"GIFTLEDGER_LOG_FORMAT": "xml"})


def test_tracing_asked_for_without_the_extra_refuses_to_start(monkeypatch):
    # None in sys.modules makes the import fail, as if the extra were not installed.
    monkeypatch.setitem(__import__("sys").modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(TracingUnavailableError, match=r"giftledger\[otel\]"):
        check_tracing_available()
    result = CliRunner().invoke(main, ["serve"], env={"GIFTLEDGER_OTEL_ENABLED": "1"})
    assert result.exit_code == 1
    assert "pip install 'giftledger[otel]'" in result.output
