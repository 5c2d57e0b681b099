"""Typed settings, read from the environment once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOLD_TTL_SECONDS = 900
DEFAULT_TOKEN_TTL_SECONDS = 3600
DEFAULT_GIFTSTREAM_CURRENCIES = (826, 840, 978)
DEFAULT_HOLD_SWEEP_INTERVAL_SECONDS = 1.0
DEFAULT_BATCH_SIZE_MAX = 64
DEFAULT_BATCH_LINGER_MS = 2.0


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".giftledger")
    hold_ttl_seconds: int = DEFAULT_HOLD_TTL_SECONDS
    token_ttl_seconds: int = DEFAULT_TOKEN_TTL_SECONDS
    giftstream_card_type: str | None = None
    giftstream_currencies: tuple[int, ...] = DEFAULT_GIFTSTREAM_CURRENCIES
    jwt_secret: str | None = None
    hold_sweep_interval_seconds: float = DEFAULT_HOLD_SWEEP_INTERVAL_SECONDS
    batch_size_max: int = DEFAULT_BATCH_SIZE_MAX
    batch_linger_ms: float = DEFAULT_BATCH_LINGER_MS
    # Start even if PostgreSQL runs with fsync, synchronous_commit or full_page_writes off.
    allow_unsafe_durability: bool = False
    # Seeds the demo location, card types and client on the first start of an embedded database.
    seed_demo: bool = field(default=False)

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        url = env.get("GIFTLEDGER_DATABASE_URL") or None
        currencies = env.get("GIFTLEDGER_GIFTSTREAM_CURRENCIES")
        return cls(
            database_url=url,
            data_dir=Path(env.get("GIFTLEDGER_DATA_DIR", ".giftledger")),
            hold_ttl_seconds=int(env.get("GIFTLEDGER_HOLD_TTL_SECONDS", DEFAULT_HOLD_TTL_SECONDS)),
            token_ttl_seconds=int(
                env.get("GIFTLEDGER_TOKEN_TTL_SECONDS", DEFAULT_TOKEN_TTL_SECONDS)
            ),
            giftstream_card_type=env.get("GIFTLEDGER_GIFTSTREAM_CARD_TYPE") or None,
            giftstream_currencies=(
                tuple(int(c) for c in currencies.split(",") if c.strip())
                if currencies
                else DEFAULT_GIFTSTREAM_CURRENCIES
            ),
            jwt_secret=env.get("GIFTLEDGER_JWT_SECRET") or None,
            hold_sweep_interval_seconds=float(
                env.get("GIFTLEDGER_HOLD_SWEEP_SECONDS", DEFAULT_HOLD_SWEEP_INTERVAL_SECONDS)
            ),
            batch_size_max=int(env.get("GIFTLEDGER_BATCH_SIZE", DEFAULT_BATCH_SIZE_MAX)),
            batch_linger_ms=float(env.get("GIFTLEDGER_BATCH_LINGER_MS", DEFAULT_BATCH_LINGER_MS)),
            allow_unsafe_durability=env.get("GIFTLEDGER_ALLOW_UNSAFE_DURABILITY", "") == "1",
            seed_demo=url is None,
        )
