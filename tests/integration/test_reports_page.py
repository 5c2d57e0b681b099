"""The /reports page, in a real headless chromium against a real server, draws the known amounts."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from datetime import timedelta
from html.parser import HTMLParser

import pytest

from tests.conftest import TEST_JWT_SECRET
from tests.finance_history import History, make_history
from tests.integration.served import served

CHROMIUM_SECONDS_MAX = 120
# Virtual time chromium lets the page run (fetches and drawing) before it dumps the DOM.
PAGE_BUDGET_MS = 10_000


class Elements(HTMLParser):
    """Every element of the dumped DOM as (tag, attributes), in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def tagged(self, tag: str, **wanted: str) -> list[dict[str, str | None]]:
        """Elements of `tag` whose attributes have the wanted values (data_day is data-day)."""
        attrs = {k.replace("_", "-"): v for k, v in wanted.items()}
        return [a for t, a in self.found
                if t == tag and all(a.get(k) == v for k, v in attrs.items())]  # fmt: skip


@pytest.fixture
async def server(database_url, world, tmp_path):
    env = os.environ | {"GIFTLEDGER_DATABASE_URL": database_url,
                        "GIFTLEDGER_JWT_SECRET": TEST_JWT_SECRET}  # fmt: skip
    async with served(env, tmp_path, "--no-access-log") as base:
        yield base


def chromium() -> str:
    found = shutil.which("chromium")
    # Not a skip: `make test` installs chromium, and a page nobody looked at is untested.
    assert found, "chromium is missing: run `make test`, or `apt-get install -y chromium`"
    return found


async def rendered(url: str) -> Elements:
    """The page's DOM after its script has fetched the reports and drawn them."""
    with tempfile.TemporaryDirectory(prefix="giftledger-chromium-") as profile:
        done = await asyncio.to_thread(
            subprocess.run,
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", f"--user-data-dir={profile}",
             f"--virtual-time-budget={PAGE_BUDGET_MS}", "--dump-dom", url],
            capture_output=True, text=True, timeout=CHROMIUM_SECONDS_MAX, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<svg" in done.stdout or "data-loaded" in done.stdout, done.stdout[-2000:]
    parser = Elements()
    parser.feed(done.stdout)
    return parser


def amounts(elements: list[dict[str, str | None]], key: str) -> dict[str, int]:
    return {str(a[key]): int(str(a["data-amount-minor"])) for a in elements}


async def test_the_page_draws_liability_over_time_and_daily_volumes(
    http, world, pool, app, server
):
    history: History = await make_history(app, world, pool)
    first, last = history.first - timedelta(days=1), history.expired_on
    url = f"{server}/reports#token={world.finance.token}&from={first}&to={last}"
    dom = await rendered(url)

    [body] = dom.tagged("body")
    assert body.get("data-loaded") == "true", dom.found
    days = [(first + timedelta(days=n)).isoformat() for n in range(7)]
    # Liability over time: one line per currency, a point per day with the day's closing amount.
    assert len(dom.tagged("svg", data_chart="liability")) == 2
    assert [a["data-series"] for a in dom.tagged("polyline")] == ["EUR", "GBP"]
    eur = amounts(dom.tagged("circle", data_currency="EUR"), "data-day")
    gbp = amounts(dom.tagged("circle", data_currency="GBP"), "data-day")
    assert eur == dict(zip(days, [0, 8900, 8600, 8200, 8200, 8200, 7300], strict=True))
    assert gbp == dict(zip(days, [0, 2000, 2000, 1500, 1500, 1500, 1500], strict=True))
    # Daily volumes: a bar per day, kind and currency, summed over both locations.
    bars: dict[tuple[str, str, str], int] = defaultdict(int)
    for bar in dom.tagged("rect"):
        if bar.get("data-kind"):
            key = (str(bar["data-currency"]), str(bar["data-day"]), str(bar["data-kind"]))
            bars[key] += int(str(bar["data-amount-minor"]))
    h = history
    assert dict(bars) == {
        ("EUR", h.first.isoformat(), "sold"): 8900,
        ("GBP", h.first.isoformat(), "sold"): 2000,
        ("EUR", h.second.isoformat(), "redeemed"): 1200,
        ("EUR", h.second.isoformat(), "loaded"): 700,
        ("EUR", h.second.isoformat(), "refunded"): 200,
        ("EUR", h.third.isoformat(), "redeemed"): 400,
        ("GBP", h.third.isoformat(), "redeemed"): 500,
        ("EUR", h.expired_on.isoformat(), "expired"): 900,
    }
    # The table of liability now.
    table = {(r["data-currency"], r["data-card-type"]): int(str(r["data-amount-minor"]))
             for r in dom.tagged("tr") if r.get("data-currency")}  # fmt: skip
    assert table == {("EUR", "dynamic19"): 3700, ("EUR", "fixed16"): 3600,
                     ("EUR", "promo"): 0, ("GBP", "gold"): 1500}  # fmt: skip


async def test_the_page_shows_the_refusal_for_a_token_without_finance_export(world, server):
    dom = await rendered(f"{server}/reports#token={world.pos.token}")
    [body] = dom.tagged("body")
    assert body.get("data-loaded") == "error"
    assert dom.tagged("svg") == []
    assert "lacks the scope 'finance:export'" in "".join(dom.text)
