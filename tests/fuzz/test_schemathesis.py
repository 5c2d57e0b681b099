"""schemathesis finds no 5xx, no answer outside the schema and no accepted invalid input."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import with_database
from tests.integration.served import cli_ok, served, server_logs, unpinned_env

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")
# Bounded so the run takes well under a minute on two cores; raise it locally to dig deeper.
EXAMPLES_PER_OPERATION = int(os.environ.get("GIFTLEDGER_FUZZ_EXAMPLES", "30"))
# A fixed seed keeps CI repeatable; set GIFTLEDGER_FUZZ_SEED to explore other inputs.
SEED = os.environ.get("GIFTLEDGER_FUZZ_SEED", "20261202")
RUN_SECONDS_MAX = 300
# Far above what the fuzzer sends, so no check ever sees a 429 it did not provoke.
UNLIMITED = "1000000"


@pytest.fixture
async def fuzz_database(server_url: str) -> AsyncIterator[str]:
    """A database of its own: the served process writes it while the suite's app is idle."""
    name = f"giftledger_fuzz_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        # The database is the URL's path; an embedded server's socket folder is in its query.
        yield with_database(server_url, name)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def seed(env: dict[str, str]) -> tuple[str, str]:
    """A location, the two demo card types and an admin client; its token and consumer key."""
    await cli_ok(env, "migrate")
    await cli_ok(env, "locations", "add", "SHOP1", "--site-id", "1")
    await cli_ok(env, "card-types", "add", "fixed16", "--length", "16")
    await cli_ok(env, "card-types", "add", "dynamic19", "--length", "19", "--dynamic")
    limits = ("--rate-per-second", UNLIMITED, "--burst", UNLIMITED)
    created = json.loads(
        await cli_ok(env, "clients", "create", "fuzz", "--scopes", "admin", "--json", *limits)
    )
    token = (await cli_ok(env, "tokens", "issue", created["client_id"])).strip()
    return token, created["consumer_key"]


async def test_schemathesis_finds_nothing_with_every_check(fuzz_database, tmp_path):
    env = unpinned_env(
        fuzz_database,
        GIFTLEDGER_RATE_LIMIT_NOT_FOUND_PER_SECOND=UNLIMITED,
        GIFTLEDGER_RATE_LIMIT_NOT_FOUND_BURST=UNLIMITED,
        GIFTLEDGER_RATE_LIMIT_TOKEN_PER_SECOND=UNLIMITED,
        GIFTLEDGER_RATE_LIMIT_TOKEN_BURST=UNLIMITED,
    )
    token, consumer_key = await seed(env)
    async with served(env, tmp_path, "--no-access-log") as base:
        command = [
            str(SCHEMATHESIS), "--config-file", str(CONFIG), "--no-color", "run",
            f"{base}/schema/openapi.json",
            "--checks", "all",  # ignored_auth and the stateful links included
            "--max-examples", str(EXAMPLES_PER_OPERATION),
            "--seed", SEED,
            # One worker: with two, hypothesis describes strategies with ast.parse in both
            # threads at once, and CPython 3.11 then fails at random with "AST constructor
            # recursion depth mismatch" (python/cpython#106905), a schemathesis runtime error.
            "--workers", "1",
            "--generation-database", "none",
            "--header", f"Authorization: Bearer {token}",
            "--report", "junit", "--report-dir", str(tmp_path / "report"),
        ]  # fmt: skip
        done = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=RUN_SECONDS_MAX,
            check=False, cwd=tmp_path, env={**env, "GIFTLEDGER_FUZZ_CONSUMER_KEY": consumer_key},
        )  # fmt: skip
        logs = server_logs(tmp_path)
    assert done.returncode == 0, f"{done.stdout[-20000:]}\n{done.stderr}\n{logs[-5000:]}"
    assert " passed" in done.stdout, done.stdout[-5000:]
