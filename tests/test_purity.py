"""The convention as a test: the pure modules (render, diff, codecs) import nothing that does
I/O and read no clock, directly or through what they import (TYPE_CHECKING imports aside)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "dvpnd"
PURE = ["config.model", "wireguard.device", "wireguard.netlink", "netlink.codec", "firewall.ruleset", "postgres.conf",
        "daemon.status", "errors", "roster.model", "linkstate", "overlay.plan", "overlay.paths", "overlay.wgquick", "wireguard.keytext",
        "relay.protocol", "relay.config", "relay.plan", "postgres.pgbackrest", "postgres.pgbr_status"]
FORBIDDEN_MODULES = {"socket", "subprocess", "pyroute2", "nftables", "psycopg", "asyncio", "os", "time", "shutil",
                     "tempfile", "aiohttp", "urllib", "http", "select", "selectors", "signal", "threading", "sdnotify"}
FORBIDDEN_CALLS = {("time", "time"), ("time", "monotonic"), ("datetime", "now"), ("datetime", "utcnow"),
                   ("date", "today"), ("os", "urandom")}
FORBIDDEN_NAMES = {"open", "input", "print"}


def _runtime_imports(tree: ast.Module) -> list[tuple[str, int]]:
    out = []
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
            if node.module.split(".")[0] == "dvpnd":  # `from dvpnd.x import module` imports that module
                out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return out


def impurities(module: str, source: str | None = None, seen: set[str] | None = None) -> list[str]:
    """What in `module` (dotted, under dvpnd) or what it imports does I/O or reads a clock."""
    seen = seen if seen is not None else set()
    if module in seen:
        return []
    seen.add(module)
    path = PKG / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PKG / module.replace(".", "/") / "__init__.py"
    if source is None and not path.exists():
        return []  # a name imported from a module, not a module
    tree = ast.parse(source if source is not None else path.read_text())
    found = []
    for name, line in _runtime_imports(tree):
        top = name.split(".")[0]
        if top in FORBIDDEN_MODULES:
            found.append(f"dvpnd/{module.replace('.', '/')}.py:{line}: imports {name}")
        elif top == "dvpnd" and name != "dvpnd":
            found += impurities(name.removeprefix("dvpnd."), None, seen)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in FORBIDDEN_CALLS:
                found.append(f"dvpnd/{module.replace('.', '/')}.py:{node.lineno}: calls {f.value.id}.{f.attr}()")
            if isinstance(f, ast.Name) and f.id in FORBIDDEN_NAMES:
                found.append(f"dvpnd/{module.replace('.', '/')}.py:{node.lineno}: calls {f.id}()")
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io_and_read_no_clock(module: str) -> None:
    assert impurities(module) == []


@pytest.mark.parametrize("line, what", [
    ("import socket", "imports socket"), ("from subprocess import run", "imports subprocess"),
    ("import time\nx = time.time()", "calls time.time()"), ("from dvpnd.postgres import server", "imports subprocess"),
    ("def f():\n    return open('/etc/passwd')", "calls open()"),
])
def test_the_check_catches_io_in_a_pure_module(line: str, what: str) -> None:
    source = (PKG / "firewall" / "ruleset.py").read_text() + "\n" + line + "\n"
    assert any(what in problem for problem in impurities("firewall.ruleset", source)), what
