"""Wiring the overlay's resolver into systemd-resolved: per-link DNS on the overlay interface
and routing-only domains (`~ZONE`, `~REVERSE`), default route off, so that only the overlay's
names go to dvpnd and everything else keeps the machine's own resolvers.

resolved runs in the machine's root network namespace and knows links by index; a dvpnd in
another namespace (a lab node, a unit with NetworkNamespacePath=) would hand it the index of
an unrelated link there. So nothing is set unless resolved sees the very links this process
sees (the same indexes with the same names, ours among them): `same_namespace`.

The settings are resolved's runtime state for the link (they go with the link, and resolved
keeps them across its own restarts). A link made again gets a new index: dvpnd applies them
again when the index changes. dvpnd leaves them in place when it stops: the zone keeps going
to this node's (then silent) resolver rather than leaking the overlay's names to the upstream.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from dvpnd.config.model import Config
from dvpnd.dns.names import reverse_zone

RESOLVED_RUNTIME = Path("/run/systemd/resolve")
_LINK = re.compile(r"^Link (\d+) \((.+)\)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class LinkDns:
    link: str
    servers: tuple[str, ...]  # ADDRESS or ADDRESS:PORT, as resolvectl takes them
    domains: tuple[str, ...]  # routing-only: "~dvpn.internal", "~0.88.10.in-addr.arpa"


def render_link_dns(config: Config) -> LinkDns:
    d = config.dns
    servers = tuple(a if d.port == 53 else f"{a}:{d.port}" for a in d.listen)
    domains = (f"~{d.zone}", "~" + ".".join(reverse_zone(config.network)))
    return LinkDns(link=config.wireguard.interface, servers=servers, domains=domains)


def render_commands(want: LinkDns) -> list[list[str]]:
    return [["resolvectl", "dns", want.link, *want.servers],
            ["resolvectl", "domain", want.link, *want.domains],
            ["resolvectl", "default-route", want.link, "false"]]


def parse_links(status: str) -> set[tuple[int, str]]:
    """(index, name) of every link `resolvectl status` lists."""
    return {(int(i), name) for i, name in _LINK.findall(status)}


def same_namespace(resolved: set[tuple[int, str]], ours: set[tuple[int, str]], link: str) -> bool:
    """Whether resolved's links are ours: every link it lists exists here with the same index,
    and our overlay link is among them."""
    return bool(resolved) and resolved <= ours and any(name == link for _, name in resolved)


def available() -> str | None:
    """None when resolved can be asked; else why not."""
    if shutil.which("resolvectl") is None:
        return "no resolvectl (systemd-resolved is not installed)"
    if not RESOLVED_RUNTIME.is_dir():
        return f"systemd-resolved is not running ({RESOLVED_RUNTIME} is missing)"
    return None


async def _run(argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, f"{argv[0]} {argv[1]}: no answer in {timeout:.0f}s"
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def read_links() -> set[tuple[int, str]]:
    """The links resolved knows (`resolvectl status`); raises RuntimeError when it cannot say."""
    code, out = await _run(["resolvectl", "status", "--no-pager"])
    if code != 0:
        raise RuntimeError(f"resolvectl status: {out.splitlines()[-1] if out else f'exit {code}'}")
    return parse_links(out)


def our_links() -> set[tuple[int, str]]:
    return {(i, name) for i, name in socket.if_nameindex()}


async def apply_link_dns(want: LinkDns) -> tuple[str | None, bool]:
    """Set the link's DNS in resolved: (None, False) when done, else (the problem, whether
    trying again may help). Each command replaces its whole setting, so a second attempt
    leaves nothing half set."""
    try:
        theirs = await read_links()
    except RuntimeError as e:
        return str(e), True
    if not same_namespace(theirs, our_links(), want.link):
        return (f"it does not see this network namespace's {want.link} (dvpnd runs in another "
                "namespace than systemd-resolved)"), False
    for argv in render_commands(want):
        code, out = await _run(argv)
        if code != 0:
            return f"{' '.join(argv)}: {out.splitlines()[-1] if out else f'exit {code}'}", True
    return None, False
