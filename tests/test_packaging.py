"""The wheel and the sdist: built with `python -m build`, installed into a fresh virtual
environment from PyPI, with both commands working."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.mark.process
@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs the 'build' package (the dev extra)")
def test_wheel_and_sdist_install_into_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], check=True,
                   capture_output=True, timeout=600)
    wheels, sdists = sorted(dist.glob("dvpnd-*.whl")), sorted(dist.glob("dvpnd-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    with tarfile.open(sdists[0]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "dvpnd/daemon/core.py", "dvpnd/cli/main.py", "dvpnd/wireguard/device.py"} <= names

    venv = tmp_path / "venv"
    # Nothing from this checkout may leak in: the venv sees only what the wheel installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    f"{wheels[0]}[pypi-nftables]"], check=True, timeout=600, env=env, cwd=tmp_path)
    for cmd in ("dvpnd", "dvpnctl", "dvpn-relay"):
        r = subprocess.run([str(venv / "bin" / cmd), "--help"], capture_output=True, text=True, timeout=60,
                           env=env, cwd=tmp_path)
        assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
    r = subprocess.run([str(venv / "bin" / "dvpnctl"), "check", "--config", str(ROOT / "etc" / "spoke.yaml")],
                       capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0 and "ok (spoke spoke-a" in r.stdout, r.stderr
    r = subprocess.run([str(venv / "bin" / "dvpnd"), "--check", "--config", str(ROOT / "etc" / "hub.yaml")],
                       capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_one_version_everywhere() -> None:
    """pyproject.toml holds the version; the code reads it from the package metadata, and what
    cannot read it (Debian's changelog, the man pages) must say the same."""
    import re
    import tomllib

    import dvpnd
    from dvpnd.daemon.status import VERSION

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert dvpnd.__version__ == VERSION == version
    changelog = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"dvpn \({re.escape(version)}(-\d+)?\) ", changelog), changelog
    for page in (ROOT / "man").iterdir():
        assert f'"dvpn {version}"' in page.read_text().splitlines()[0], page
