"""`dns:`, the overlay's resolver (dvpnd/dns)."""

from __future__ import annotations

import re
from typing import Any

from dvpnd.config.fields import Reader, check_ip, check_port
from dvpnd.config.model import DnsConfig

DNS_KEYS = {"enabled", "zone", "listen", "port", "upstream", "forward", "resolved"}
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_zone(value: str) -> str | None:
    labels = value.lower().rstrip(".").split(".")
    if not value or not all(_LABEL.fullmatch(x) for x in labels):
        return f"'{value}' is not a domain name (labels of letters, digits and hyphens)"
    if labels[-2:] == ["in-addr", "arpa"] or labels[-1] == "arpa":
        return f"'{value}' is a reverse zone: the overlay's reverse zone follows overlay.network"
    return None


def _addresses(r: Reader, m: dict[str, Any], key: str) -> tuple[str, ...] | None:
    if key not in m:
        return None
    v = m[key]
    items = v if isinstance(v, list) else [v]
    out = []
    for i, x in enumerate(items):
        problem = check_ip(str(x)) if isinstance(x, str) else f"{x!r} is not an address"
        if problem:
            r.error(("dns", key, i) if isinstance(v, list) else ("dns", key), problem)
        else:
            out.append(str(x))
    return tuple(out)


def dns_section(r: Reader, top: dict[str, Any], is_hub: bool, address: str | None) -> DnsConfig:
    m = r.section(top, ("dns",), DNS_KEYS)
    d = DnsConfig()
    listen = _addresses(r, m, "listen")
    if listen is None:
        listen = ("127.0.0.1",) if is_hub or address is None else (address,)
    if "listen" in m and not listen:
        r.error(("dns", "listen"), "needs at least one address")
    upstream = _addresses(r, m, "upstream") or ()
    return DnsConfig(
        enabled=r.get(m, ("dns", "enabled"), bool, default=d.enabled),
        zone=r.get(m, ("dns", "zone"), str, default=d.zone, check=check_zone).lower().rstrip("."),
        listen=listen,
        port=r.get(m, ("dns", "port"), int, default=d.port, check=check_port),
        upstream=upstream,
        forward=r.get(m, ("dns", "forward"), bool, default=d.forward),
        resolved=r.get(m, ("dns", "resolved"), bool, default=d.resolved),
    )
