"""Deployment files agree with the code: user, ports, settings, probes that hit real routes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from litestar import Litestar

from api.cli import main
from api.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PORT = 8080
# The environment variables the service reads: every GIFTLEDGER_ name in its settings module.
KNOWN_VARIABLES = set(re.findall(r'"(GIFTLEDGER_[A-Z_]+)"', (ROOT / "api/settings.py").read_text()))


def routes(app: Litestar) -> set[str]:
    return {route.path for route in app.routes}


def k8s(name: str, document: str | None = None) -> dict[str, Any]:
    """The manifest in the file; in a file of several, the one of that metadata.name."""
    manifests = list(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()))
    if document is None:
        [only] = manifests
        return only
    [named] = [m for m in manifests if m["metadata"]["name"] == document]
    return named


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    [only] = manifest["spec"]["template"]["spec"]["containers"]
    return only


def cli_exists(argv: list[str]) -> bool:
    """The command line names a real giftledger command (its --help succeeds)."""
    assert argv[0].endswith("giftledger"), argv
    return CliRunner().invoke(main, [*[a for a in argv[1:] if not a.startswith("-")][:1],
                                     "--help"]).exit_code == 0  # fmt: skip


def test_the_image_runs_as_a_non_root_user_and_checks_a_real_route(app):
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.count("FROM ") >= 2, "multi-stage"
    assert all("slim" in line for line in dockerfile.splitlines() if line.startswith("FROM "))
    user = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)[-1]
    assert user not in ("root", "0")
    assert f"EXPOSE {PORT}" in dockerfile
    [check] = re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", dockerfile)
    assert (int(check[0]), check[1] in routes(app)) == (PORT, True)
    command = re.search(r"^CMD (\[.*\])", dockerfile, re.MULTILINE)
    assert command is not None
    argv = yaml.safe_load(command.group(1))
    assert cli_exists(argv)
    assert argv[argv.index("--port") + 1] == str(PORT)


def test_the_kubernetes_deployment_probes_real_routes_as_non_root(app):
    deployment = k8s("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    api = container(deployment)
    assert api["ports"][0]["containerPort"] == PORT
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in routes(app), probe
    assert (api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]) == (
        "/health/ready",
        "/health/live",
    )
    assert {"cpu", "memory"} <= set(api["resources"]["requests"])
    assert {e["name"] for e in api["env"]} <= KNOWN_VARIABLES
    assert cli_exists(api["command"])
    [secret_ref] = api["envFrom"]
    assert k8s("secret.yaml", secret_ref["secretRef"]["name"])["stringData"]


def test_the_secret_the_migration_job_hpa_and_pdb_fit_the_deployment():
    secret = k8s("secret.yaml", "giftledger")
    assert set(secret["stringData"]) <= KNOWN_VARIABLES
    # Everything in this Secret reaches the pods through envFrom, so no signing key is in it.
    assert set(secret["stringData"]) == {"GIFTLEDGER_DATABASE_URL"}
    job = k8s("migrate-job.yaml")
    assert cli_exists(container(job)["command"])
    assert container(job)["command"][1] == "migrate"
    labels = k8s("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert k8s("service.yaml")["spec"]["selector"] == labels
    assert k8s("pdb.yaml")["spec"]["selector"]["matchLabels"] == labels
    hpa = k8s("hpa.yaml")["spec"]
    assert hpa["scaleTargetRef"]["name"] == k8s("deployment.yaml")["metadata"]["name"]
    assert hpa["minReplicas"] >= 2


def test_compose_runs_postgres_migrations_and_the_api_with_known_settings():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert {"postgres", "migrate", "api"} <= set(compose)
    for name in ("migrate", "api"):
        assert set(compose[name]["environment"]) <= KNOWN_VARIABLES
    assert cli_exists(compose["migrate"]["command"])
    assert compose["api"]["ports"] == [f"{PORT}:{PORT}"]


def test_the_signing_key_secret_is_optional_and_empty_so_keys_rotate_in_the_database():
    signing = k8s("secret.yaml", "giftledger-signing-key")
    # Empty reads as unset (Settings.from_env), so applying the file as it is pins nothing.
    assert signing["stringData"] == {"GIFTLEDGER_JWT_SECRET": ""}
    [entry] = [e for e in container(k8s("deployment.yaml"))["env"]
               if e["name"] == "GIFTLEDGER_JWT_SECRET"]  # fmt: skip
    assert entry["valueFrom"]["secretKeyRef"] == {
        "name": "giftledger-signing-key", "key": "GIFTLEDGER_JWT_SECRET", "optional": True,
    }  # fmt: skip
    assert Settings.from_env({"GIFTLEDGER_JWT_SECRET": ""}).jwt_secret is None


@pytest.mark.parametrize("key", ["ExecStart", "ExecStartPre"])
def test_the_systemd_unit_runs_real_commands_as_a_service_user(key):
    unit = (DEPLOY / "giftledger.service").read_text()
    assert re.search(r"^User=(?!root$)\w+$", unit, re.MULTILINE)
    line = re.search(rf"^{key}=(.*)$", unit, re.MULTILINE)
    assert line is not None
    assert cli_exists(shlex.split(line.group(1)))


def test_only_the_ingress_and_the_scraper_reach_pods_that_trust_forwarded_headers():
    """The deployment trusts every proxy's X-Forwarded-* headers, so a network policy must keep
    every other pod of the cluster away from the API port."""
    argv = container(k8s("deployment.yaml"))["command"]
    assert argv[argv.index("--forwarded-allow-ips") + 1] == "*"
    policy = k8s("networkpolicy.yaml")["spec"]
    labels = k8s("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"] == labels
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])
    assert rule["ports"] == [{"port": "http"}]
