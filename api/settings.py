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
# Measured with the writer process under make bench's pay at 64 connections, 2026-12-04: 1 ms
# against 2 ms, alternated, 1 worker 4,870-5,360 req/s against 4,140-4,860 (p99 19-23 ms against
# 20-24); 2 workers about the same (4,070-4,940 against 4,090-4,980). 0 ms did worse at 2
# workers (4,070-4,490), as did 4 ms (4,530-4,760).
DEFAULT_BATCH_LINGER_MS = 1.0
# Card aggregates the ledger writer keeps in memory, about 1.1 KiB each (110 MiB when full). A card
# beyond them is a cold read: its latest snapshot and up to 50 events, about 0.8 ms of the
# writer's CPU and a read of PostgreSQL's, against a few µs for a cached card.
DEFAULT_CARD_CACHE_SIZE = 100_000
# Where a served instance's ledger writer runs (api/writer_process.py): a process of its own
# shared by the workers, or a thread in each worker.
WRITER_MODES = ("process", "thread")
DEFAULT_WRITER_MODE = "process"
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `per_second` requests on average, up to `burst` at once."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1):
            raise ValueError(f"a rate limit needs per_second > 0 and burst >= 1, not {self}")


# Each is per client (or per address) and per process; see api/limits.py.
DEFAULT_CLIENT_RATE_LIMIT = RateLimit(per_second=200.0, burst=400)
# 404s are rare for honest terminals: a mistyped number now and then. Guessing numbers is not.
DEFAULT_NOT_FOUND_RATE_LIMIT = RateLimit(per_second=0.5, burst=20)
# Each token request costs a deliberately slow scrypt; this bounds what one address can spend.
DEFAULT_TOKEN_RATE_LIMIT = RateLimit(per_second=5.0, burst=20)


def _rate_limit(env: Mapping[str, str], name: str, default: RateLimit) -> RateLimit:
    return RateLimit(
        per_second=float(env.get(f"GIFTLEDGER_RATE_LIMIT{name}_PER_SECOND", default.per_second)),
        burst=int(env.get(f"GIFTLEDGER_RATE_LIMIT{name}_BURST", default.burst)),
    )


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    # A streaming replica for card reads (read-your-writes is kept for the writing client).
    read_database_url: str | None = None
    data_dir: Path = Path(".giftledger")
    hold_ttl_seconds: int = DEFAULT_HOLD_TTL_SECONDS
    token_ttl_seconds: int = DEFAULT_TOKEN_TTL_SECONDS
    giftstream_card_type: str | None = None
    giftstream_currencies: tuple[int, ...] = DEFAULT_GIFTSTREAM_CURRENCIES
    jwt_secret: str | None = None
    hold_sweep_interval_seconds: float = DEFAULT_HOLD_SWEEP_INTERVAL_SECONDS
    batch_size_max: int = DEFAULT_BATCH_SIZE_MAX
    batch_linger_ms: float = DEFAULT_BATCH_LINGER_MS
    card_cache_size: int = DEFAULT_CARD_CACHE_SIZE
    writer_mode: str = DEFAULT_WRITER_MODE
    # The writer process's socket, which `giftledger serve` hands its workers.
    writer_socket: str | None = None
    client_rate_limit: RateLimit = DEFAULT_CLIENT_RATE_LIMIT
    not_found_rate_limit: RateLimit = DEFAULT_NOT_FOUND_RATE_LIMIT
    token_rate_limit: RateLimit = DEFAULT_TOKEN_RATE_LIMIT
    # Start even if PostgreSQL runs with fsync, synchronous_commit or full_page_writes off.
    allow_unsafe_durability: bool = False
    # One JSON object per line on stderr, or plain text lines for a person at a terminal.
    log_format: str = "json"
    log_level: str = "INFO"
    # One line per request on the giftledger.access logger (`serve --no-access-log` turns it off).
    access_log: bool = True
    # OpenTelemetry tracing; needs the `otel` extra (see api/tracing.py).
    otel_enabled: bool = False
    # Issue tokens over plain HTTP to any address, not only over HTTPS or from loopback.
    allow_insecure_tokens: bool = False
    # Seeds the demo location, card types and client on the first start of an embedded database.
    seed_demo: bool = field(default=False)

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"GIFTLEDGER_LOG_FORMAT must be one of {LOG_FORMATS}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"GIFTLEDGER_LOG_LEVEL must be one of {LOG_LEVELS}")
        if self.card_cache_size < 1:
            raise ValueError("GIFTLEDGER_CARD_CACHE_SIZE must be at least 1")
        if self.writer_mode not in WRITER_MODES:
            raise ValueError(f"GIFTLEDGER_WRITER must be one of {WRITER_MODES}")

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
            read_database_url=env.get("GIFTLEDGER_READ_DATABASE_URL") or None,
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
            card_cache_size=int(env.get("GIFTLEDGER_CARD_CACHE_SIZE", DEFAULT_CARD_CACHE_SIZE)),
            writer_mode=env.get("GIFTLEDGER_WRITER", DEFAULT_WRITER_MODE).lower(),
            writer_socket=env.get("GIFTLEDGER_WRITER_SOCKET") or None,
            client_rate_limit=_rate_limit(env, "", DEFAULT_CLIENT_RATE_LIMIT),
            not_found_rate_limit=_rate_limit(env, "_NOT_FOUND", DEFAULT_NOT_FOUND_RATE_LIMIT),
            token_rate_limit=_rate_limit(env, "_TOKEN", DEFAULT_TOKEN_RATE_LIMIT),
            allow_unsafe_durability=env.get("GIFTLEDGER_ALLOW_UNSAFE_DURABILITY", "") == "1",
            log_format=env.get("GIFTLEDGER_LOG_FORMAT", "json").lower(),
            log_level=env.get("GIFTLEDGER_LOG_LEVEL", "INFO").upper(),
            access_log=env.get("GIFTLEDGER_ACCESS_LOG", "1") != "0",
            # The standard OpenTelemetry variable alone turns tracing on: setting an exporter
            # endpoint and getting no traces would be a surprise.
            otel_enabled=(
                env.get("GIFTLEDGER_OTEL_ENABLED", "") == "1"
                or bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            ),
            allow_insecure_tokens=env.get("GIFTLEDGER_ALLOW_INSECURE_TOKENS", "") == "1",
            seed_demo=url is None,
        )
