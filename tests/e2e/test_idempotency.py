"""A retried POST with the same Idempotency-Key has exactly one effect and one answer."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.idempotency import IDEMPOTENCY_RETENTION_HOURS, purge_expired_keys

RESICO = "/api/giftcards/v1"
_numbers = itertools.count(5_000_000_000_000_000)


def new_number() -> str:
    return str(next(_numbers))


async def sell(http, client, number: str, amount: str = "20.00") -> None:
    sale = {"amount": amount, "transactionNo": number[-8:], "locationCode": "SHOP1"}
    response = await http.post(f"{RESICO}/cards/{number}", json=sale, headers=client.headers)
    assert response.status_code == 200, response.text


async def use(http, client, number: str, amount: str, key: str | None):
    headers = dict(client.headers) | ({"Idempotency-Key": key} if key else {})
    return await http.post(
        f"{RESICO}/transactions/{client.consumer_key}/cards/{number}",
        json={"amount": amount},
        headers=headers,
    )


async def event_types(http, client, number: str) -> list[str]:
    response = await http.get(f"/v1/cards/{number}/events?limit=500", headers=client.headers)
    return [e["type"] for e in response.json()["events"]]


async def test_fifty_concurrent_retries_with_one_key_pay_once_with_identical_answers(http, world):
    number = new_number()
    await sell(http, world.pos, number)

    answers = await asyncio.gather(
        *(use(http, world.pos, number, "1.00", "pay-1") for _ in range(50))
    )

    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert answers[0].json()["currentBalance"] == 19.0
    assert await event_types(http, world.auditor, number) == ["Sold", "Redeemed"]


async def test_a_sequential_retry_replays_the_first_answer_and_says_so(http, world):
    number = new_number()
    await sell(http, world.pos, number)
    first = await use(http, world.pos, number, "2.00", "pay-2")
    await use(http, world.pos, number, "1.00", None)  # The card moves on in between.
    again = await use(http, world.pos, number, "2.00", "pay-2")

    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await event_types(http, world.auditor, number) == ["Sold", "Redeemed", "Redeemed"]


async def test_a_key_reused_with_another_body_is_refused_and_changes_nothing(http, world):
    number = new_number()
    await sell(http, world.pos, number)
    await use(http, world.pos, number, "2.00", "pay-3")
    reused = await use(http, world.pos, number, "3.00", "pay-3")

    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert await event_types(http, world.auditor, number) == ["Sold", "Redeemed"]


async def test_keys_belong_to_their_client(http, world):
    number = new_number()
    await sell(http, world.pos, number)
    mine = await use(http, world.pos, number, "2.00", "shared-key")
    theirs = await use(http, world.other, number, "2.00", "shared-key")

    assert mine.status_code == theirs.status_code == 200
    assert theirs.json()["currentBalance"] == 16.0
    assert await event_types(http, world.auditor, number) == ["Sold", "Redeemed", "Redeemed"]


async def test_a_key_longer_than_255_characters_is_refused(http, world):
    number = new_number()
    await sell(http, world.pos, number)
    assert (await use(http, world.pos, number, "1.00", "k" * 255)).status_code == 200
    too_long = await use(http, world.pos, number, "1.00", "k" * 256)
    assert too_long.status_code == 422
    assert too_long.json()["code"] == "invalid_idempotency_key"


async def test_native_and_giftstream_writes_honour_the_key(http, world):
    headers = dict(world.pos.headers) | {"Idempotency-Key": "gs-1"}
    body = {"cardType": "2", "currencyCode": "978", "initialBalance": "5.00"}
    created = await asyncio.gather(
        *(http.post("/giftcard", json=body, headers=headers) for _ in range(5))
    )
    assert {c.status_code for c in created} == {200}
    assert len({c.json()["data"]["cardId"] for c in created}) == 1
    number = created[0].json()["data"]["cardId"]

    hold_headers = dict(world.pos.headers) | {"Idempotency-Key": "hold-1"}
    holds = await asyncio.gather(
        *(
            http.post(f"/v1/cards/{number}/holds", json={"amount_minor": 100}, headers=hold_headers)
            for _ in range(5)
        )
    )
    assert {h.status_code for h in holds} == {201}
    assert len({h.json()["hold_id"] for h in holds}) == 1
    assert await event_types(http, world.auditor, number) == ["Sold", "Reserved"]


retry_schedules = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), min_size=1, max_size=8)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(schedule=retry_schedules)
async def test_any_retry_schedule_pays_each_key_exactly_once(http, world, schedule):
    """Waves of concurrent retries: each key's body is fixed; each key pays once, whatever came."""
    number = new_number()
    await sell(http, world.pos, number, "100.00")
    amount_of = {k: f"{k + 1}.00" for k in range(4)}
    answers: dict[int, set[bytes]] = {}
    for key, copies in schedule:
        wave = await asyncio.gather(
            *(
                use(http, world.pos, number, amount_of[key], f"{number}-{key}")
                for _ in range(copies)
            )
        )
        assert {r.status_code for r in wave} == {200}
        answers.setdefault(key, set()).update(r.content for r in wave)

    assert all(len(bodies) == 1 for bodies in answers.values())
    types = await event_types(http, world.auditor, number)
    assert types == ["Sold"] + ["Redeemed"] * len(answers)
    card = await http.get(f"{RESICO}/cards/{number}", headers=world.pos.headers)
    assert card.json()["currentBalance"] == 100 - sum(k + 1 for k in answers)


async def test_a_refusal_is_the_answer_a_retry_with_its_key_gets(http, world):
    number = new_number()
    await sell(http, world.pos, number, "5.00")
    refused = await use(http, world.pos, number, "6.00", "pay-refused")
    await use(http, world.pos, number, "4.00", None)  # Nothing would fund it now either way.
    again = await use(http, world.pos, number, "6.00", "pay-refused")

    assert refused.status_code == again.status_code == 422
    assert refused.json()["code"] == "insufficient_funds"
    assert again.content == refused.content
    assert again.headers["content-type"].startswith("application/problem+json")
    assert again.headers["idempotent-replayed"] == "true"
    assert await event_types(http, world.auditor, number) == ["Sold", "Redeemed"]


async def test_a_refused_giftstream_create_replays_its_seed_shaped_answer(http, world):
    headers = dict(world.pos.headers) | {"Idempotency-Key": "gs-dup"}
    await sell(http, world.pos, "5999999999999999")
    body = {"cardType": "2", "currencyCode": "978", "identifier": "5999999999999999"}
    first = await http.post("/giftcard", json=body, headers=headers)
    again = await http.post("/giftcard", json=body, headers=headers)
    assert first.status_code == again.status_code == 400
    assert first.json()["message"] == "Data Invalid: Card identifier already exists"
    assert again.content == first.content


async def _age_key(pool, key: str, hours: float) -> None:
    updated = await pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - make_interval(secs => $2) WHERE key = $1",
        key,
        hours * 3600,
    )
    assert updated == "UPDATE 1"


async def _old_keys(pool, count: int) -> None:
    """count answers stored an hour past the retention, straight into the table."""
    await pool.execute(
        "INSERT INTO idempotency_keys"
        " (scope, key, request_hash, status_code, response_body, media_type, created_at)"
        " SELECT 'client:old', 'old-' || i, 'h', 200, '\\x7b7d', 'application/json',"
        "  now() - make_interval(hours => $2 + 1)"
        " FROM generate_series(1, $1) AS i",
        count,
        IDEMPOTENCY_RETENTION_HOURS,
    )


async def test_keys_are_kept_for_the_retention_and_purged_after_it_in_batches(http, world, pool):
    number = new_number()
    await sell(http, world.pos, number)
    await use(http, world.pos, number, "1.00", "kept")
    await use(http, world.pos, number, "1.00", "expired")
    await _age_key(pool, "kept", IDEMPOTENCY_RETENTION_HOURS - 1)  # Past the promised 24 h.
    await _age_key(pool, "expired", IDEMPOTENCY_RETENTION_HOURS + 1)
    await _old_keys(pool, 2_500)

    purged = await purge_expired_keys(pool, batch_rows=1_000)  # Three batches.

    assert purged == 2_501
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'kept'") == 1
    kept = await use(http, world.pos, number, "1.00", "kept")
    assert kept.headers["idempotent-replayed"] == "true"
    # An expired key is forgotten: the same request is a new payment.
    expired = await use(http, world.pos, number, "1.00", "expired")
    assert "idempotent-replayed" not in expired.headers
    assert await event_types(http, world.auditor, number) == ["Sold"] + ["Redeemed"] * 3


async def test_sweepers_purging_at_once_share_the_expired_keys(pool, world):
    await _old_keys(pool, 5_000)

    purged = await asyncio.gather(*(purge_expired_keys(pool, batch_rows=500) for _ in range(3)))

    assert sum(purged) == 5_000
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0
