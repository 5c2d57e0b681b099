"""With tracing on, each request is a span named by its route, and its log lines name the trace."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import AsyncIterator

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.app import create_app
from api.logs import ContextFilter, JsonFormatter

NUMBER = "7100000000000000021"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """An in-memory exporter on the process's tracer provider, which the app then uses."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="module")
async def traced(settings, spans) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(dataclasses.replace(settings, otel_enabled=True))
    async with AsyncTestClient(app=app) as client:
        yield client


async def test_a_request_is_a_span_named_by_its_route_and_its_log_line_has_the_trace(
    traced, world, spans
):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    body = {"card_type": "dynamic19", "amount_minor": 500, "number": NUMBER}
    assert (await traced.post("/v1/cards", json=body, headers=world.pos.headers)).is_success
    spans.clear()
    logging.getLogger("giftledger.access").addHandler(handler)
    try:
        response = await traced.get(f"/v1/cards/{NUMBER}", headers=world.pos.headers)
    finally:
        logging.getLogger("giftledger.access").removeHandler(handler)
    assert response.status_code == 200
    [server] = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert server.name == "GET /v1/cards/{number}"
    assert server.attributes["http.route"] == "/v1/cards/{number}"
    assert server.attributes["http.status_code"] == 200
    # No span, name or attribute, carries the card number (it travels in the path).
    for span in spans.get_finished_spans():
        assert NUMBER not in span.name
        assert not [v for v in span.attributes.values() if NUMBER in str(v)], span.attributes
    request_id = response.headers["x-request-id"]
    [line] = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["request_id"] == request_id
    assert line["trace_id"] == format(server.context.trace_id, "032x")
    assert line["span_id"] == format(server.context.span_id, "016x")
