"""Optional OpenTelemetry tracing, through Litestar's OpenTelemetry plugin.

On only when GIFTLEDGER_OTEL_ENABLED=1 or OTEL_EXPORTER_OTLP_ENDPOINT is set, and then the
`otel` extra must be installed: asking for traces and silently getting none would be worse than
refusing to start. Spans go to the OTLP exporter, configured by the standard OTEL_* variables
(endpoint, headers, OTEL_SERVICE_NAME), unless the process already has an SDK tracer provider
(`opentelemetry-instrument`, or a test's in-memory exporter), which is then used as it is.

Card numbers are bearer secrets and travel in paths, so no span carries a raw path: a span is
named by method and route template (`POST /v1/cards/{number}/redeem`), and the request
attributes the ASGI instrumentation takes from the URL are redacted as api/redaction.py does.
"""

from __future__ import annotations

from typing import Any

from litestar.plugins import InitPlugin
from litestar.types import Scope

from api import logs
from api.redaction import redact

SERVICE_NAME_DEFAULT = "giftledger"
# The semantic conventions' name for the route template attribute.
HTTP_ROUTE = "http.route"


class TracingUnavailableError(RuntimeError):
    def __init__(self) -> None:
        super().__init__(
            "tracing was asked for (GIFTLEDGER_OTEL_ENABLED=1 or OTEL_EXPORTER_OTLP_ENDPOINT) but"
            " OpenTelemetry is not installed: install the extra, pip install 'giftledger[otel]',"
            " or unset those variables"
        )


def check_tracing_available() -> None:
    try:
        import litestar.plugins.opentelemetry  # noqa: F401
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:  # Litestar's MissingDependencyException is an ImportError.
        raise TracingUnavailableError from exc


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The span's name before routing: the method alone (the route is added when known)."""
    return str(scope.get("method", scope["type"])), {}


def _redact_request_attributes(span: Any, _scope: Scope) -> None:
    attributes = getattr(span, "attributes", None) or {}
    for key, value in list(attributes.items()):
        if isinstance(value, str) and (redacted := redact(value)) != value:
            span.set_attribute(key, redacted)


def _current_trace_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def name_server_span(scope: Scope) -> dict[str, Any]:
    """Called as the answer starts, while the server span is current: name it after the route,
    and hand its ids to the access log line."""
    from opentelemetry import trace

    span = trace.get_current_span()
    template = scope.get("path_template")
    if template:
        span.update_name(f"{scope['method']} {template}")
        span.set_attribute(HTTP_ROUTE, template)
    ids = _current_trace_ids()
    return {} if ids is None else {"trace_id": ids[0], "span_id": ids[1]}


def _tracer_provider() -> Any:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; without either the
    # service is called giftledger rather than the SDK's "unknown_service".
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE_NAME_DEFAULT}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def tracing_plugin() -> InitPlugin:
    """Litestar's OpenTelemetry plugin, wired as described above; call only with tracing on."""
    check_tracing_available()
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    config = OpenTelemetryConfig(
        tracer_provider=_tracer_provider(),
        scope_span_details_extractor=_span_details,
        server_request_hook_handler=_redact_request_attributes,
    )
    logs.current_trace_ids = _current_trace_ids
    return OpenTelemetryPlugin(config)
