"""Configuration the operator manages: locations, card types and API clients."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

# scrypt parameters for client secrets: slow enough to make guessing expensive, fast enough
# that a token request stays in the tens of milliseconds.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
# audit:read covers history, time travel and verification; finance:export covers exports,
# reports and reconciliation. A POS client holds neither.
SCOPES = (
    "cards:read", "cards:sell", "cards:redeem", "cards:reserve",
    "audit:read", "finance:export", "admin",
)  # fmt: skip
DEFAULT_CLIENT_SCOPES = ("cards:read", "cards:sell", "cards:redeem", "cards:reserve")
DEFAULT_ALLOWED_CHARS = "0123456789"
SITE_ID_MAX = 2**31 - 1  # The site_id column is a PostgreSQL integer.
# HS256 wants a key at least as long as its 256-bit output; 48 random bytes leave margin.
SIGNING_KEY_BYTES = 48
SIGNING_KEY_ID_BYTES = 8
PINNED_KEY_ID_PREFIX = "env-"
PINNED_KEY_ID_HEX_CHARS = 16
_SIGNING_KEY_LOCK_KEY = 0x6769667401  # pg_advisory_xact_lock key for creating the first key.


@dataclass(frozen=True)
class Location:
    code: str
    site_id: int
    name: str


@dataclass(frozen=True)
class CardType:
    name: str
    prefix: str
    length: int
    allowed_chars: str
    fixed_amount: bool
    redeem_allowed: bool
    reservations_allowed: bool
    validity_months: int
    currency: str

    def matches(self, number: str) -> bool:
        return (
            len(number) == self.length
            and number.startswith(self.prefix)
            and all(ch in self.allowed_chars for ch in number)
        )


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    consumer_key: str
    scopes: tuple[str, ...]
    locations: tuple[str, ...]
    revoked: bool
    # This client's own request rate limit; None takes the service-wide default.
    rate_per_second: float | None = None
    rate_burst: int | None = None

    def may_act_at(self, location_code: str | None) -> bool:
        return not self.locations or location_code in self.locations


@dataclass(frozen=True)
class NewClient:
    client: Client
    client_secret: str


@dataclass(frozen=True)
class SigningKey:
    """A token signing key: tokens name it by `kid` in their header."""

    kid: str
    secret: str = field(repr=False)
    created_at: datetime | None = None


def new_signing_key() -> SigningKey:
    return SigningKey(
        kid=secrets.token_hex(SIGNING_KEY_ID_BYTES),
        secret=secrets.token_urlsafe(SIGNING_KEY_BYTES),
    )


def pinned_signing_key(secret: str) -> SigningKey:
    """The one key GIFTLEDGER_JWT_SECRET pins. Its kid is derived from the secret, so every
    process pinned to the same secret names it alike, and a changed secret gets another kid."""
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return SigningKey(kid=PINNED_KEY_ID_PREFIX + digest[:PINNED_KEY_ID_HEX_CHARS], secret=secret)


async def ensure_signing_key(conn: asyncpg.Connection) -> None:
    """Create the first signing key unless there is one; several processes starting together
    create exactly one."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SIGNING_KEY_LOCK_KEY)
        if await conn.fetchval("SELECT count(*) FROM signing_keys") == 0:
            key = new_signing_key()
            await conn.execute(
                "INSERT INTO signing_keys (kid, secret) VALUES ($1, $2)", key.kid, key.secret
            )


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        _scheme, salt_hex, _digest = stored.split("$")
    except ValueError:
        return False
    return hmac.compare_digest(hash_secret(secret, bytes.fromhex(salt_hex)), stored)


def _client(row: asyncpg.Record) -> Client:
    return Client(
        client_id=row["client_id"],
        name=row["name"],
        consumer_key=row["consumer_key"],
        scopes=tuple(row["scopes"]),
        locations=tuple(row["locations"]),
        revoked=row["revoked_at"] is not None,
        rate_per_second=row["rate_per_second"],
        rate_burst=row["rate_burst"],
    )


def _card_type(row: asyncpg.Record) -> CardType:
    return CardType(**dict(row))


class ConfigStore:
    """Reads and writes the configuration tables. All methods are short single statements."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add_location(self, code: str, site_id: int, name: str = "") -> Location:
        await self._pool.execute(
            "INSERT INTO locations (code, site_id, name) VALUES ($1, $2, $3)", code, site_id, name
        )
        return Location(code, site_id, name)

    async def locations(self) -> list[Location]:
        rows = await self._pool.fetch("SELECT code, site_id, name FROM locations ORDER BY code")
        return [Location(**dict(r)) for r in rows]

    async def location(self, code: str) -> Location | None:
        row = await self._pool.fetchrow(
            "SELECT code, site_id, name FROM locations WHERE code = $1", code
        )
        return Location(**dict(row)) if row else None

    async def location_by_site(self, site_id: int) -> Location | None:
        if not 0 <= site_id <= SITE_ID_MAX:
            return None
        row = await self._pool.fetchrow(
            "SELECT code, site_id, name FROM locations WHERE site_id = $1", site_id
        )
        return Location(**dict(row)) if row else None

    async def add_card_type(self, card_type: CardType) -> CardType:
        await self._pool.execute(
            "INSERT INTO card_types (name, prefix, length, allowed_chars, fixed_amount,"
            " redeem_allowed, reservations_allowed, validity_months, currency)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            card_type.name, card_type.prefix, card_type.length, card_type.allowed_chars,
            card_type.fixed_amount, card_type.redeem_allowed, card_type.reservations_allowed,
            card_type.validity_months, card_type.currency,
        )  # fmt: skip
        return card_type

    async def card_types(self) -> list[CardType]:
        rows = await self._pool.fetch("SELECT * FROM card_types ORDER BY name")
        return [_card_type(r) for r in rows]

    async def card_type(self, name: str) -> CardType | None:
        row = await self._pool.fetchrow("SELECT * FROM card_types WHERE name = $1", name)
        return _card_type(row) if row else None

    async def card_type_for_number(self, number: str) -> CardType | None:
        """The matching card type with the longest prefix: specific ranges win over broad ones."""
        matching = [t for t in await self.card_types() if t.matches(number)]
        return max(matching, key=lambda t: len(t.prefix), default=None)

    async def create_client(
        self, name: str, scopes: tuple[str, ...], locations: tuple[str, ...] = (),
        rate_per_second: float | None = None, rate_burst: int | None = None,
    ) -> NewClient:  # fmt: skip
        client = Client(
            client_id=f"cl_{secrets.token_hex(8)}",
            name=name,
            consumer_key=secrets.token_hex(16),
            scopes=scopes,
            locations=locations,
            revoked=False,
            rate_per_second=rate_per_second,
            rate_burst=rate_burst,
        )
        secret = secrets.token_urlsafe(32)
        await self._pool.execute(
            "INSERT INTO clients (client_id, name, secret_hash, consumer_key, scopes, locations,"
            " rate_per_second, rate_burst) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            client.client_id, name, hash_secret(secret), client.consumer_key,
            list(scopes), list(locations), rate_per_second, rate_burst,
        )  # fmt: skip
        return NewClient(client, secret)

    async def set_client_limit(
        self, client_id: str, rate_per_second: float | None, rate_burst: int | None
    ) -> bool:
        """Set a client's own rate limit; None for both returns it to the default."""
        status = await self._pool.execute(
            "UPDATE clients SET rate_per_second = $2, rate_burst = $3 WHERE client_id = $1",
            client_id,
            rate_per_second,
            rate_burst,
        )
        return str(status).endswith(" 1")

    async def clients(self) -> list[Client]:
        rows = await self._pool.fetch("SELECT * FROM clients ORDER BY created_at, client_id")
        return [_client(r) for r in rows]

    async def client(self, client_id: str) -> Client | None:
        row = await self._pool.fetchrow("SELECT * FROM clients WHERE client_id = $1", client_id)
        return _client(row) if row else None

    async def authenticate(self, client_id: str, secret: str) -> Client | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM clients WHERE client_id = $1 AND revoked_at IS NULL", client_id
        )
        if row is None or not verify_secret(secret, row["secret_hash"]):
            return None
        return _client(row)

    async def revoke_client(self, client_id: str) -> bool:
        status = await self._pool.execute(
            "UPDATE clients SET revoked_at = now() WHERE client_id = $1 AND revoked_at IS NULL",
            client_id,
        )
        return str(status).endswith(" 1")

    async def signing_keys(self) -> list[SigningKey]:
        """Every signing key, oldest first: the last one signs new tokens."""
        rows = await self._pool.fetch(
            "SELECT kid, secret, created_at FROM signing_keys ORDER BY seq"
        )
        return [SigningKey(**dict(r)) for r in rows]

    async def add_signing_key(self) -> SigningKey:
        """Rotate: a new key signs from now on; the older ones still verify until removed."""
        key = new_signing_key()
        created_at = await self._pool.fetchval(
            "INSERT INTO signing_keys (kid, secret) VALUES ($1, $2) RETURNING created_at",
            key.kid,
            key.secret,
        )
        return SigningKey(key.kid, key.secret, created_at)

    async def remove_signing_key(self, kid: str) -> bool:
        """Remove a key, and with it every token it signed; the last key is never removed."""
        # FOR UPDATE makes two removals at once count each other's deleted row out.
        status = await self._pool.execute(
            "DELETE FROM signing_keys WHERE kid = $1"
            " AND (SELECT count(*) FROM (SELECT 1 FROM signing_keys FOR UPDATE) AS k) > 1",
            kid,
        )
        return str(status).endswith(" 1")

    async def setting(self, key: str, default: str) -> str:
        """A service-wide setting, created with the default on first use, then fixed."""
        await self._pool.execute(
            "INSERT INTO service_settings (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            key,
            default,
        )
        value = await self._pool.fetchval("SELECT value FROM service_settings WHERE key = $1", key)
        return str(value)

    async def next_card_ref(self) -> int:
        return int(await self._pool.fetchval("SELECT nextval('card_ref_seq')"))
