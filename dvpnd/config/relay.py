"""The TCP fallback's keys: `relay:` (the hub's listener, a spoke's loopback port, how the relay
process runs) and each hub's `transport`, `relay_url`, `relay_fingerprint`, `relay_ca`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dvpnd.config.fields import Reader, abs_path, check_cap, check_ip, check_port
from dvpnd.config.model import DEFAULT_RELAY_PORT, TRANSPORTS, Endpoint, RelaySettings
from dvpnd.config.yamlsrc import KeyPath

RELAY_KEYS = {"enabled", "listen", "port", "cert", "key", "self_signed_dir",
              "max_clients", "max_clients_per_source", "idle",
              "local_port", "udp_holddown", "spawn", "config_file", "status_file"}
HUB_RELAY_KEYS = {"transport", "relay_url", "relay_fingerprint", "relay_ca"}
SPAWN = ("auto", "yes", "no")
RELAY_PATH = "/dvpn/relay/v1"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def relay_section(r: Reader, top: dict[str, Any], is_hub: bool, run_dir: Path) -> RelaySettings:
    """`relay:`; its files default to dvpnd's runtime directory (the control socket's), so that
    several dvpnd instances on one machine each have their own."""
    m = r.section(top, ("relay",), RELAY_KEYS)
    d = RelaySettings()
    hub_only = {"enabled", "listen", "port", "cert", "key", "self_signed_dir", "max_clients", "max_clients_per_source",
                "idle"}
    for k in sorted(set(m) & (hub_only if not is_hub else {"local_port", "udp_holddown"})):
        r.error(("relay", k), "is for a hub (its listener)" if not is_hub else
                "is for a spoke (WireGuard's endpoint for a hub reached over TCP)")

    enabled = r.get(m, ("relay", "enabled"), bool, default=False)
    cert = abs_path(r, m, ("relay", "cert"), "") if "cert" in m else None
    key = abs_path(r, m, ("relay", "key"), "") if "key" in m else None
    if (cert is None) != (key is None):
        r.error(("relay", "cert" if cert is None else "key"), "give cert and key together (or neither: a "
                                                              "self-signed pair is made in self_signed_dir, by "
                                                              "default the state directory)")
    own = abs_path(r, m, ("relay", "self_signed_dir"), "") if "self_signed_dir" in m else None
    if own is not None and cert is not None:
        r.error(("relay", "self_signed_dir"), "is where dvpnd makes its own pair: not with cert and key")
    total = r.get(m, ("relay", "max_clients"), int, default=d.max_clients, check=check_cap)
    per = r.get(m, ("relay", "max_clients_per_source"), int, default=min(total, d.max_per_ip), check=check_cap)
    if per > total:
        r.error(("relay", "max_clients_per_source"), f"{per} is more than max_clients ({total})")
    idle = float(r.get(m, ("relay", "idle"), (int, float), default=d.idle,
                       check=lambda v: None if 30 <= v <= 3600 else f"{v} s: between 30 (WireGuard's keepalive "
                                                                    "is 25 s) and 3600"))
    spawn = r.get(m, ("relay", "spawn"), str, default="auto",
                  check=lambda v: None if v in SPAWN else f"'{v}': one of {', '.join(SPAWN)}")
    return RelaySettings(
        enabled=bool(enabled and is_hub),
        address=r.get(m, ("relay", "listen"), str, default=d.address, check=check_ip),
        port=r.get(m, ("relay", "port"), int, default=d.port, check=check_port),
        cert=cert if cert is not None and key is not None else None,
        key=key if cert is not None and key is not None else None,
        self_signed_dir=own,
        max_clients=total, max_per_ip=per, idle=idle,
        local_port=r.get(m, ("relay", "local_port"), int, default=d.local_port, check=check_port),
        udp_holddown=float(r.get(m, ("relay", "udp_holddown"), (int, float), default=d.udp_holddown,
                                 check=lambda v: None if 1 <= v <= 3600 else f"{v} s: between 1 and 3600")),
        spawn=spawn,
        config_file=abs_path(r, m, ("relay", "config_file"), str(run_dir / "relay.json")),
        status_file=abs_path(r, m, ("relay", "status_file"), str(run_dir / "relay-status.json")),
    )


def hub_transport(r: Reader, h: dict[str, Any], kp: KeyPath, endpoint: Endpoint | None) -> dict[str, Any]:
    """A hub entry's transport keys, as HubSpec fields."""
    transport = r.get(h, kp + ("transport",), str, default="udp",
                      check=lambda v: None if v in TRANSPORTS else f"'{v}': one of {', '.join(TRANSPORTS)}")
    url = r.get(h, kp + ("relay_url",), str, default=None)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme != "wss" or not parts.hostname or parts.path != RELAY_PATH:
            r.error(kp + ("relay_url",), f"'{url}': must be wss://HOST[:PORT]{RELAY_PATH}")
            url = None
    elif endpoint is not None:
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        url = f"wss://{host}:{DEFAULT_RELAY_PORT}{RELAY_PATH}"
    fp = r.get(h, kp + ("relay_fingerprint",), str, default=None)
    if fp is not None:
        fp = fp.lower().removeprefix("sha256:").replace(":", "")
        if not _HEX64.fullmatch(fp):
            r.error(kp + ("relay_fingerprint",), "must be the SHA-256 of the relay's certificate, 64 hex digits "
                                                 "(dvpnctl relay fingerprint on the hub prints it)")
            fp = None
    ca = abs_path(r, h, kp + ("relay_ca",), "") if "relay_ca" in h else None
    if transport != "udp" and fp is None and ca is None:
        r.error(kp + ("transport",), f"{transport} needs relay_fingerprint (the hub's self-signed certificate, "
                                     "pinned) or relay_ca (a CA that signed it)")
    return {"transport": transport, "relay_url": url, "relay_fingerprint": fp, "relay_ca": ca}
