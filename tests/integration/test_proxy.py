"""The real deploy/nginx.conf, in nginx before a served giftledger, works as deploy/README says."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from api.app import REQUEST_BODY_BYTES_MAX
from tests.integration.served import free_port, served, unpinned_env

NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
NGINX_SECONDS_MAX = 10
# An address of TEST-NET-1 (RFC 5737): connecting a UDP socket to it sends nothing, and names the
# address this machine would reach the network from.
UNROUTED_ADDRESS = "192.0.2.1"
REQUEST_ID = "proxy-check-42"


def nginx_binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    # Not a skip: `make test` installs nginx, and a proxy config nobody ran is untested.
    assert os.access(found, os.X_OK), "nginx is missing: run `make test`, or apt-get install nginx"
    return found


def outward_address() -> str | None:
    """A non-loopback address of this machine, or None on a machine without a network."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((UNROUTED_ADDRESS, 9))
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


def replace_once(text: str, old: str, new: str) -> str:
    """Fails when deploy/nginx.conf no longer holds `old` exactly once, so that the test follows
    the config instead of quietly running one that has drifted from it."""
    count = text.count(old)
    assert count == 1, f"deploy/nginx.conf has {old!r} {count} times, not once: update this test"
    return text.replace(old, new)


@dataclass(frozen=True)
class Site:
    """Where the deployment's fixed addresses and files are, on this machine."""

    app_port: int
    http_port: int
    https_port: int
    addresses: tuple[str, ...]
    certificate: Path
    key: Path


def site_config(site: Site) -> str:
    """deploy/nginx.conf with only its deployment-specific values replaced. It listens on the
    given IPv4 addresses only: not every test machine has IPv6, or should expose a port."""
    text = NGINX_CONF.read_text()
    text = replace_once(text, "server 127.0.0.1:8080;", f"server 127.0.0.1:{site.app_port};")
    http = "".join(f"    listen {a}:{site.http_port};\n" for a in site.addresses)
    text = replace_once(text, "    listen 80;\n    listen [::]:80;\n", http)
    https = "".join(f"    listen {a}:{site.https_port} ssl http2;\n" for a in site.addresses)
    text = replace_once(text, "    listen 443 ssl http2;\n    listen [::]:443 ssl http2;\n", https)
    text = replace_once(text, "/etc/ssl/giftledger/fullchain.pem", str(site.certificate))
    return replace_once(text, "/etc/ssl/giftledger/privkey.pem", str(site.key))


def main_config(prefix: Path) -> str:
    """What /etc/nginx/nginx.conf provides around a conf.d file, kept inside the prefix folder."""
    # As root, workers run as nobody, who cannot enter pytest's private tmp_path.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(
        f"    {kind}_temp_path {prefix / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'};\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    access_log {prefix / 'access.log'};\n{temp_paths}"
        f"    include {prefix / 'giftledger.conf'};\n}}\n"
    )


def self_signed(folder: Path, addresses: tuple[str, ...]) -> tuple[Path, Path]:
    """A certificate for the addresses, and its key; the certificate is also the client's CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "giftledger proxy test")])
    now = datetime.now(UTC)
    ips = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(ips), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_path, key_path


async def _wait_for_port(proc: subprocess.Popen[bytes], port: int, error_log: Path) -> None:
    deadline = time.monotonic() + NGINX_SECONDS_MAX
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"nginx exited with {proc.returncode}: see {error_log}"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"nginx did not listen on {port}")


@asynccontextmanager
async def nginx(site: Site, prefix: Path) -> AsyncIterator[None]:
    """nginx on the site's config, checked with `nginx -t` first; stopped on exit."""
    (prefix / "giftledger.conf").write_text(site_config(site))
    main = prefix / "nginx.conf"
    main.write_text(main_config(prefix))
    command = [nginx_binary(), "-p", str(prefix), "-c", str(main), "-e", str(prefix / "error.log")]
    checked = await asyncio.to_thread(
        subprocess.run, [*command, "-t"], capture_output=True, text=True, timeout=NGINX_SECONDS_MAX
    )
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen(command)  # noqa: ASYNC220 - started once, waited on below.
    try:
        await _wait_for_port(proc, site.https_port, prefix / "error.log")
        yield
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, NGINX_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, NGINX_SECONDS_MAX)


@dataclass(frozen=True)
class Proxied:
    app: str
    http: str
    https: str
    # The proxy reached from a non-loopback address of this machine; None without one.
    https_outward: str | None
    tls: ssl.SSLContext

    def client(self, base: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=base or self.https, verify=self.tls, timeout=10)


@asynccontextmanager
async def proxied(env: Mapping[str, str], folder: Path) -> AsyncIterator[Proxied]:
    """`giftledger serve` on 127.0.0.1, behind nginx running deploy/nginx.conf."""
    outward = outward_address()
    addresses = ("127.0.0.1",) if outward is None else ("127.0.0.1", outward)
    certificate, key = self_signed(folder, addresses)
    async with served(env, folder) as app:
        site = Site(int(app.rsplit(":", 1)[1]), free_port(), free_port(), addresses,
                    certificate, key)  # fmt: skip
        async with nginx(site, folder):
            yield Proxied(
                app=app,
                http=f"http://127.0.0.1:{site.http_port}",
                https=f"https://127.0.0.1:{site.https_port}",
                https_outward=None if outward is None else f"https://{outward}:{site.https_port}",
                tls=ssl.create_default_context(cafile=certificate),
            )


@pytest.fixture(scope="module")
async def proxy(database_url, tmp_path_factory) -> AsyncIterator[Proxied]:
    async with proxied(unpinned_env(database_url), tmp_path_factory.mktemp("proxy")) as running:
        yield running


def token_form(client) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": client.client_id,
            "client_secret": client.client_secret}  # fmt: skip


async def token_through(http: httpx.AsyncClient, world) -> str:
    response = await http.post("/oauth/token", data=token_form(world.pos))
    assert response.status_code == 200, response.text
    assert response.headers["strict-transport-security"] == "max-age=63072000"
    assert response.json()["token_type"] == "Bearer"
    return str(response.json()["access_token"])


async def test_over_https_a_token_is_issued_and_a_card_issued_and_read_with_it(proxy, world):
    async with proxy.client() as http:
        headers = {"Authorization": f"Bearer {await token_through(http, world)}"}
        body = {"card_type": "fixed16", "amount_minor": 5000}
        issued = await http.post("/v1/cards", json=body, headers=headers)
        assert issued.status_code == 201, issued.text
        number = issued.json()["number"]
        read = await http.get(f"/v1/cards/{number}", headers=headers)
    assert read.status_code == 200, read.text
    assert (read.json()["number"], read.json()["balance_minor"]) == (number, 5000)


async def test_a_remote_client_gets_a_token_because_nginx_forwards_https(proxy, world):
    """From a non-loopback address the service issues tokens only over HTTPS
    (tests/e2e/test_tls.py), and it sees HTTPS only in nginx's X-Forwarded-Proto."""
    if proxy.https_outward is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach nginx from")
    async with proxy.client(proxy.https_outward) as http:
        await token_through(http, world)


async def test_plain_http_is_redirected_to_https_without_reaching_the_service(proxy):
    async with proxy.client(proxy.http) as http:
        response = await http.get("/v1/cards/1000000000000001?at=1")
    assert response.status_code in (301, 308)
    # $host drops the port: in a deployment HTTPS is on 443.
    assert response.headers["location"] == "https://127.0.0.1/v1/cards/1000000000000001?at=1"
    assert "x-request-id" not in response.headers


async def test_metrics_are_served_but_not_through_the_proxy(proxy):
    async with httpx.AsyncClient(base_url=proxy.app) as direct:
        assert (await direct.get("/metrics")).status_code == 200
    async with proxy.client() as http:
        response = await http.get("/metrics")
    assert response.status_code == 404
    assert "x-request-id" not in response.headers, "nginx answers, not the service"


async def test_nginx_refuses_a_body_over_the_services_limit_and_passes_one_at_it(proxy):
    async with proxy.client() as http:
        at_limit = await http.post("/v1/cards", content=b" " * REQUEST_BODY_BYTES_MAX)
        over = await http.post("/v1/cards", content=b" " * (REQUEST_BODY_BYTES_MAX + 1))
        # Settlement files have a larger limit of their own in nginx and in the service.
        settlement = await http.post(
            "/v1/reconciliations", content=b" " * (REQUEST_BODY_BYTES_MAX + 1)
        )
    assert (at_limit.status_code, "x-request-id" in at_limit.headers) == (401, True)
    assert (over.status_code, "x-request-id" in over.headers) == (413, False)
    assert "nginx" in over.text
    assert (settlement.status_code, "x-request-id" in settlement.headers) == (401, True)


async def test_the_request_id_comes_back_through_the_proxy(proxy):
    async with proxy.client() as http:
        given = await http.get("/health", headers={"X-Request-ID": REQUEST_ID})
        made = await http.get("/health")
    assert given.headers["x-request-id"] == REQUEST_ID
    assert len(made.headers["x-request-id"]) == 32


async def test_a_clients_own_x_forwarded_for_is_replaced_by_its_address(database_url, tmp_path):
    """Seen through the token endpoint's budget per address: every request through nginx from
    this machine spends 127.0.0.1's, whatever X-Forwarded-For the client sent."""
    env = unpinned_env(database_url, GIFTLEDGER_RATE_LIMIT_TOKEN_BURST="2",
                       GIFTLEDGER_RATE_LIMIT_TOKEN_PER_SECOND="0.001")  # fmt: skip
    # A wrong secret is refused (401) once the budget lets the request through, else it is 429.
    wrong = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}
    async with proxied(env, tmp_path) as proxy, proxy.client() as http:
        statuses = [
            (
                await http.post("/oauth/token", data=wrong, headers={"X-Forwarded-For": a})
            ).status_code
            for a in ("1.2.3.4", "5.6.7.8", "9.10.11.12")
        ]
        async with httpx.AsyncClient(base_url=proxy.app) as direct:
            # Straight from a trusted 127.0.0.1, uvicorn does take the header's address.
            forwarded = {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"}
            spoofed = await direct.post("/oauth/token", data=wrong, headers=forwarded)
            own = await direct.post("/oauth/token", data=wrong)
    assert statuses == [401, 401, 429]
    assert (spoofed.status_code, own.status_code) == (401, 429), "1.2.3.4's budget is untouched"
