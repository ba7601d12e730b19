"""The container and deployment files parse and agree with dvpnd: both compose files through
`docker-compose config`, the Dstack example through dvpnd's own config check, the cloud-init
user-data as YAML, the shell scripts through `sh -n`/`bash -n`. (Running them is docker/lab
test, ./dev vmtest.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dvpnd.config.load import load_config

ROOT = Path(__file__).resolve().parent.parent
DSTACK = ROOT / "deploy" / "dstack"
pytestmark = pytest.mark.process  # docker-compose and the shells read the files
compose_cli = pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose (./dev setup)")


def _compose_config(file: Path, env: dict[str, str]) -> dict:
    r = subprocess.run(["docker-compose", "-f", str(file), "config"], capture_output=True, text=True,
                       env=dict(os.environ, **env), timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


@compose_cli
def test_local_compose_file_has_hub_three_spokes_and_their_databases() -> None:
    cfg = _compose_config(ROOT / "docker-compose.yml", {})
    services = cfg["services"]
    assert set(services) == {"hub", "spoke-a", "spoke-b", "spoke-c", "pg-a", "pg-b", "pg-c", "hub-relay", "relay-c",
                             "s3"}
    published = sorted(p["published"] if isinstance(p, dict) else int(str(p).split(":")[-2])
                       for s in ("spoke-a", "spoke-b", "spoke-c") for p in services[s]["ports"])
    assert published == [8000, 8001, 8002]
    for pg, spoke in (("pg-a", "spoke-a"), ("pg-b", "spoke-b"), ("pg-c", "spoke-c")):
        assert services[pg]["network_mode"] == f"service:{spoke}"
    assert "ports" not in services["hub"]          # nothing of the hub is published
    assert "ports" not in services["s3"]           # the S3 stand-in is on the compose network only


@compose_cli
def test_dstack_compose_file_is_valid_and_needs_its_settings() -> None:
    env = {"DVPND_CONFIG_YAML": (DSTACK / "spoke.example.yaml").read_text(), "DVPN_PG_REPLICATION_PASSWORD": "x"}
    cfg = _compose_config(DSTACK / "docker-compose.yml", env)
    dvpnd = cfg["services"]["dvpnd"]
    assert dvpnd["network_mode"] == "host" and dvpnd["cap_add"] == ["NET_ADMIN"]
    mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in dvpnd["volumes"]]
    assert any(m.startswith("dvpn-state:/var/lib/dvpn") for m in mounts), mounts
    # the guest agent's socket for the offsite passphrase (GetKey), only in dvpnd's container
    assert "/var/run/dstack.sock:/var/run/dstack.sock:rw" in mounts
    assert not any("dstack.sock" in str(v) for v in cfg["services"]["postgres"]["volumes"])
    assert set(cfg["volumes"]) == {"dvpn-state", "pgdata", "pgrun", "relay"}   # named: on the persistent disk
    r = subprocess.run(["docker-compose", "-f", str(DSTACK / "docker-compose.yml"), "config", "-q"],
                       capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                            if not k.startswith("DVPN")}, timeout=60)
    assert r.returncode != 0 and "DVPND_CONFIG_YAML" in r.stderr


def test_dstack_example_passes_dvpnds_check_and_leaves_dstack_alone() -> None:
    c = load_config(DSTACK / "spoke.example.yaml")
    assert c.role == "spoke" and 9182 in c.firewall.public_udp_ports
    assert {"dstack-wg0", "docker0"} <= set(c.firewall.trusted_interfaces)
    assert str(c.postgres.password_file) == "/run/dvpn/pg-replication.password"
    # what new installs use: the confidential overlay, never fed an older roster than it joined with
    assert c.confidential and c.overlay.min_serial >= 1 and c.overlay.authority
    assert not {"wg0", "wgt0", "wg*"} & set(c.firewall.trusted_interfaces)


def test_cloud_init_runs_provision_hub_and_scripts_parse() -> None:
    data = yaml.safe_load((ROOT / "deploy" / "hub" / "cloud-init.yaml").read_text())
    assert any("provision-hub" in str(step) for step in data["runcmd"])
    for script in ("deploy/hub/provision-hub", "docker/entrypoint", "docker/pg-start", "docker/container-env"):
        subprocess.run(["sh", "-n", str(ROOT / script)], check=True)
    for script in ("docker/lab", "packaging/vmtest", "packaging/vm/dvpn-vmtest"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_dockerfile_copies_files_that_exist() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for src in line.split():
            if "*" not in src:
                assert (ROOT / src).exists(), src


def _mounts(service: dict) -> list[str]:
    return [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in service.get("volumes", [])]


@compose_cli
@pytest.mark.parametrize("file", ["docker-compose.yml", "deploy/dstack/docker-compose.yml"])
def test_database_containers_never_see_the_key_and_dvpnd_has_a_memory_limit(file: str) -> None:
    env = {"DVPND_CONFIG_YAML": "x", "DVPN_PG_REPLICATION_PASSWORD": "x"}
    services = _compose_config(ROOT / file, env)["services"]
    for name, svc in services.items():
        runs_postgres = "pg-start" in " ".join(svc.get("entrypoint") or [])
        runs_relay = "/usr/bin/dvpn-relay" in (svc.get("entrypoint") or [])
        runs_s3 = "dvpnd.lab.s3" in (svc.get("entrypoint") or [])
        holds_key = [m for m in _mounts(svc) if m.split(":")[1] in ("/var/lib/dvpn", "/var/lib/dvpn/")]
        if runs_postgres:
            assert not holds_key, f"{file}: {name} runs PostgreSQL and mounts the key's volume"
        elif runs_s3:  # the S3 stand-in: no key, a limit of its own
            assert not holds_key and svc["mem_limit"] in ("256m", 268435456) and svc["ulimits"]["core"] == 0
        elif runs_relay:  # Internet-facing on a hub: no WireGuard key, a limit of its own
            assert not holds_key, f"{file}: {name} runs the relay and mounts the key's volume"
            assert svc["mem_limit"] in ("128m", 134217728) and svc["ulimits"]["core"] == 0
        else:
            assert holds_key or name == "hub", f"{file}: {name} has no state volume"
            assert svc["mem_limit"] in ("512m", 536870912), f"{file}: {name} has no memory limit"
            assert svc["ulimits"]["core"] == 0


def test_the_unit_caps_memory_and_forbids_core_dumps() -> None:
    for name in ("dvpnd.service", "dvpn-relay.service"):  # the relay's limit is its own
        unit = (ROOT / "systemd" / name).read_text()
        assert re.search(r"^MemoryMax=\d+M$", unit, re.M) and re.search(r"^LimitCORE=0$", unit, re.M), name
    path = (ROOT / "systemd" / "dvpn-relay.path").read_text()
    relay = (ROOT / "systemd" / "dvpn-relay.service").read_text()
    # the path unit watches the file dvpnd writes by default, and the service reads that file
    from dvpnd.config.model import DEFAULT_CONTROL_SOCKET

    default = DEFAULT_CONTROL_SOCKET.parent / "relay.json"
    assert f"PathExists={default}" in path and f"--config {default}" in relay
