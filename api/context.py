"""Who, where and when a request acts: the Origin every card command receives."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Response

from api.errors import location_forbidden, unknown_location
from ledger.card import Origin
from projections.config import Client, ConfigStore


def utc_now() -> datetime:
    return datetime.now(UTC)


async def origin_for(config: ConfigStore, client: Client, location_code: str | None) -> Origin:
    """Resolve the acting location; a client limited to one location acts there by default."""
    if location_code is None and len(client.locations) == 1:
        location_code = client.locations[0]
    if location_code is None:
        if client.locations:
            raise location_forbidden(None)
        return Origin(occurred_at=utc_now(), actor=client.client_id)
    location = await config.location(location_code)
    if location is None:
        raise unknown_location(location_code)
    if not client.may_act_at(location.code):
        raise location_forbidden(location.code)
    return Origin(
        occurred_at=utc_now(),
        actor=client.client_id,
        location_code=location.code,
        site_id=location.site_id,
    )


async def unbound_origin(config: ConfigStore, client: Client) -> Origin:
    """For a command bound to no location (releasing one's own hold, block, unblock): the
    client's location when it has exactly one, else none; never refused for where it acts."""
    if len(client.locations) == 1:
        return await origin_for(config, client, client.locations[0])
    return Origin(occurred_at=utc_now(), actor=client.client_id)


_DECIMAL_NUMBER_ENCODER = msgspec.json.Encoder(decimal_format="number")


class DecimalNumberResponse(Response[Any]):
    """JSON with decimals written as exact JSON numbers (57.23), as the seed APIs expect."""

    def render(self, content: Any, media_type: str, enc_hook: Any = None) -> bytes:
        if isinstance(content, msgspec.Struct):
            return _DECIMAL_NUMBER_ENCODER.encode(content)
        return super().render(content, media_type, enc_hook)
