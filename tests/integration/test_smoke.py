"""The harness works: a sold card can be read back through the Resico API."""


async def test_sell_then_get_returns_the_card(http, world):
    pos = world.pos
    sold = await http.post(
        "/api/giftcards/v1/cards/1234567812345678",
        json={"amount": 20.0, "transactionNo": "1", "locationCode": "SHOP1"},
        headers=pos.headers,
    )
    assert sold.status_code == 200, sold.text
    got = await http.get("/api/giftcards/v1/cards/1234567812345678", headers=pos.headers)
    assert got.json()["currentBalance"] == 20.0
