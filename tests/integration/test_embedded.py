"""`giftledger serve` without a database URL runs its own PostgreSQL, seeds a demo, stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.integration.served import free_port

GIFTLEDGER = Path(sys.executable).with_name("giftledger")
START_SECONDS_MAX = 60
STOP_SECONDS_MAX = 20


def start(data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIFTLEDGER_")}
    env["GIFTLEDGER_DATA_DIR"] = str(data_dir)
    return subprocess.Popen(
        [str(GIFTLEDGER), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_health(base: str) -> None:
    deadline = time.monotonic() + START_SECONDS_MAX
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError("the embedded service did not start")


def postgres_running_in(data_dir: Path) -> bool:
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(data_dir) in " ".join(
            proc.info["cmdline"] or []
        ):
            return True
    return False


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=STOP_SECONDS_MAX)
    return output


def wait_until_stopped(data_dir: Path) -> bool:
    deadline = time.monotonic() + STOP_SECONDS_MAX
    while postgres_running_in(data_dir) and time.monotonic() < deadline:
        time.sleep(0.3)
    return not postgres_running_in(data_dir)


def demo_token(base: str, demo: dict[str, str]) -> str:
    form = {"grant_type": "client_credentials", "client_id": demo["client_id"],
            "client_secret": demo["client_secret"]}  # fmt: skip
    return str(httpx.post(f"{base}/oauth/token", data=form).json()["access_token"])


def test_first_start_seeds_a_working_demo_and_exit_stops_the_database(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(data_dir, port)
    try:
        wait_for_health(base)
        demo = json.loads((data_dir / "demo-client.json").read_text())
        token = demo_token(base, demo)
        sold = httpx.post(
            f"{base}/api/giftcards/v1/cards/1234567812345678",
            json={"amount": 25.0, "transactionNo": "00000001", "locationCode": "SHOP1"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert sold.status_code == 200, sold.text
        assert sold.json()["currentBalance"] == 25.0
        assert postgres_running_in(data_dir)
    finally:
        output = stop(proc)
    assert demo["client_secret"] in output, "make run prints the demo credentials"
    assert "curl" in output
    assert wait_until_stopped(data_dir), "the private PostgreSQL stops with the service"

    again = start(data_dir, port)  # A second start keeps the data and seeds nothing new.
    try:
        wait_for_health(base)
        token = demo_token(base, demo)
        card = httpx.get(
            f"{base}/api/giftcards/v1/cards/1234567812345678",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert card.json()["currentBalance"] == 25.0
    finally:
        stop(again)
    assert wait_until_stopped(data_dir)
