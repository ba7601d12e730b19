"""Where the resolver forwards names outside its zones (pure): the configured upstreams, or the
node's real resolvers from a resolv.conf, never one that leads back to dvpnd.

systemd-resolved's own upstream file (/run/systemd/resolve/resolv.conf) is read first: the
stub's /etc/resolv.conf names 127.0.0.53, which may send the overlay's zone to us. Never
taken: an address dvpnd listens on, Docker's embedded resolver (127.0.0.11, which forwards to
whatever `dns:` names, dvpnd included), resolved's stubs (127.0.0.53/54), and addresses in the
overlay (another node's dvpnd, which would forward again)."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, ip_address
from pathlib import Path

RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")
RESOLV_CONF = Path("/etc/resolv.conf")
LOOPS = {"127.0.0.11", "127.0.0.53", "127.0.0.54"}
MAX_UPSTREAMS = 3


def upstreams_from(text: str, own: Iterable[str], overlay: IPv4Network | None) -> list[str]:
    """The usable `nameserver` addresses of a resolv.conf, in order (at most three, as libc)."""
    mine = {str(ip_address(a)) for a in own}
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) < 2 or parts[0] != "nameserver":
            continue
        try:
            addr = ip_address(parts[1].split("%", 1)[0])
        except ValueError:
            continue
        a = str(addr)
        if a in mine or a in LOOPS or addr.is_unspecified or (overlay is not None and addr in overlay) or a in out:
            continue
        out.append(a)
    return out[:MAX_UPSTREAMS]


def find_upstreams(configured: tuple[str, ...], own: Iterable[str], overlay: IPv4Network | None,
                   files: Iterable[Path] = (RESOLVED_UPSTREAM, RESOLV_CONF)) -> tuple[list[str], str]:
    """(upstreams, where they came from): the configured ones, else the first file that names a
    usable one."""
    if configured:
        return list(configured), "dns.upstream"
    own = list(own)
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        found = upstreams_from(text, own, overlay)
        if found:
            return found, str(f)
    return [], "nowhere (no usable nameserver)"
