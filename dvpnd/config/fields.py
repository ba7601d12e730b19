"""Reading configuration values: a Reader that converts and checks each value and collects
every problem as `FILE:LINE: key.path: problem`, and the checks and parsers the sections share."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from dvpnd.config.model import (
    Endpoint,
)
from dvpnd.config.yamlsrc import KeyPath, Source
from dvpnd.wireguard.keytext import decode_key

DURATION_RE = re.compile(r"^(\d+)\s*([smhd]?)\Z")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}\Z")
IFPATTERN_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,14}\*?\Z")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)


T = TypeVar("T")
MISSING = object()


class Reader:
    """Walks a parsed document, converting values and collecting problems."""

    def __init__(self, src: Source, problems: list[str]):
        self.src = src
        self.problems = problems

    def error(self, kp: KeyPath, problem: str) -> None:
        self.problems.append(f"{self.src.where(kp)}: {problem}")

    def section(self, parent: Any, kp: KeyPath, allowed: set[str]) -> dict[str, Any]:
        """The mapping at kp (or {} if absent); unknown keys are reported."""
        value = lookup(parent, kp[-1]) if kp else parent
        if value is MISSING or value is None:
            return {}
        if not isinstance(value, dict):
            self.error(kp, f"must be a mapping, got {kind_of(value)}")
            return {}
        for key in value:
            if key not in allowed:
                hint = closest(key, allowed)
                self.error(kp + (key,), "unknown key" + (f" (did you mean '{hint}'?)" if hint else ""))
        return value

    def get(
        self,
        mapping: dict[str, Any],
        kp: KeyPath,
        kind: type | tuple[type, ...],
        default: Any = MISSING,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """The value at kp if it has the right type and passes `check`, else the default."""
        value = mapping.get(str(kp[-1]), MISSING)
        if value is MISSING or value is None:
            if default is MISSING:
                self.error(kp, "is required")
                return None
            return default
        if not is_kind(value, kind):
            self.error(kp, f"must be {kind_name(kind)}, got {kind_of(value)}")
            return None if default is MISSING else default
        if check is not None:
            problem = check(value)
            if problem:
                self.error(kp, problem)
                return None if default is MISSING else default
        return value

    def port_list(self, mapping: dict[str, Any], kp: KeyPath, default: tuple[int, ...]) -> tuple[int, ...]:
        value = mapping.get(str(kp[-1]), MISSING)
        if value is MISSING or value is None:
            return default
        if not isinstance(value, list):
            self.error(kp, f"must be a list of ports, got {kind_of(value)}")
            return default
        ports: list[int] = []
        for i, item in enumerate(value):
            if not is_kind(item, int):
                self.error(kp + (i,), f"must be an integer port, got {kind_of(item)}")
            elif problem := check_port(item):
                self.error(kp + (i,), problem)
            elif item in ports:
                self.error(kp + (i,), f"port {item} is listed twice")
            else:
                ports.append(item)
        return tuple(ports)


def lookup(parent: Any, key: Any) -> Any:
    if isinstance(parent, dict):
        return parent.get(key, MISSING)
    return MISSING


def is_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, kinds)


def kind_of(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
    return match[0] if match else None


def check_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"port {value} is out of range (1-65535)"


def check_ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"'{value}' is not an IP address"
    return None


def check_cap(value: int) -> str | None:
    """A cap on connections."""
    return None if 1 <= value <= 65536 else f"{value} is out of range (1-65536)"


def check_key(value: str) -> str | None:
    try:
        raw = decode_key(value)
    except ValueError as e:
        return f"public key {e}"
    if raw == bytes(32):
        return "is the all-zero key, which no peer can have"
    return None


def check_ifname(value: str) -> str | None:
    return None if IFNAME_RE.match(value) else "is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)"


def check_name(value: str) -> str | None:
    if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}\Z", value):
        return None
    return "must be 1-63 characters of letters, digits, '_', '.', '-' starting with a letter or digit"


def parse_endpoint(text: str) -> Endpoint:
    """Parse `host:port` or `[v6]:port`; raise ValueError with the reason."""
    text = text.strip()
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)\Z", text) or re.match(r"^([^:\[\]]+):(\d+)\Z", text)
    if not m:
        raise ValueError("must be host:port (or [IPv6]:port)")
    host, port = m.group(1), int(m.group(2))
    if problem := check_port(port):
        raise ValueError(problem)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOSTNAME_RE.match(host):
            raise ValueError(f"'{host}' is neither an IP address nor a DNS name") from None
    return Endpoint(host, port)


def parse_duration(value: int | str) -> int:
    """Seconds from an integer or a string like '90', '30m', '6h', '7d'; ValueError otherwise."""
    if isinstance(value, int):
        return value
    m = DURATION_RE.match(value.strip())
    if not m:
        raise ValueError(f"'{value}' is not a duration (seconds, or a number with s, m, h or d)")
    return int(m.group(1)) * UNITS[m.group(2)]


def read_duration(r: Reader, m: dict[str, Any], kp: KeyPath, default: int, lo: int, hi: int) -> int:
    raw = r.get(m, kp, (int, str), default=default)
    try:
        value = parse_duration(raw)
    except ValueError as e:
        r.error(kp, str(e))
        return default
    if not lo <= value <= hi:
        r.error(kp, f"must be between {lo} and {hi} seconds, got {value}")
        return default
    return value


def abs_path(r: Reader, m: dict[str, Any], kp: KeyPath, default: str) -> Path:
    text = r.get(m, kp, str, default=default,
                 check=lambda v: None if v.startswith("/") else f"'{v}' must be an absolute path")
    return Path(text)


def overlay_address(r: Reader, m: dict[str, Any], kp: KeyPath, network: IPv4Network | None,
             default: str | None = None) -> IPv4Address | None:
    text = r.get(m, kp, str, default=default if default is not None else MISSING)
    if text is None:
        return None
    return in_overlay(r, kp, text, network)


def in_overlay(r: Reader, kp: KeyPath, text: str, network: IPv4Network | None) -> IPv4Address | None:
    try:
        addr = IPv4Address(text)
    except ValueError:
        r.error(kp, f"'{text}' is not an IPv4 address")
        return None
    if network is not None:
        if addr not in network:
            r.error(kp, f"{addr} is outside the overlay {network}")
            return None
        if addr in (network.network_address, network.broadcast_address):
            r.error(kp, f"{addr} is the network or broadcast address of {network}")
            return None
    return addr
