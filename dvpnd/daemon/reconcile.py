"""One reconcile pass: make the interface, the WireGuard device and the firewall match the config.

Each pass reads the actual state, computes the difference and writes only that, then reads
the device back: a write that did not take is an error, not a silent success. A pass with
nothing to do writes nothing.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dvpnd import netif as link
from dvpnd.config.model import Config
from dvpnd.errors import BackendError
from dvpnd.firewall import nft
from dvpnd.util.fsutil import write_atomic
from dvpnd.wireguard.backends import Backend, select_backend
from dvpnd.wireguard.device import DeviceChanges, DeviceState, diff_device, render_device
from dvpnd.wireguard.keys import encode_key, load_or_create_private_key, public_key

log = logging.getLogger("dvpnd.reconcile")

# How long a spoke's session with the hub may be silent before a DNS endpoint is looked up again.
RERESOLVE_AFTER = 135.0
RERESOLVE_MIN_INTERVAL = 30.0


@dataclass
class ReconcileResult:
    device: DeviceState
    wg_changes: DeviceChanges
    link_changed: bool
    firewall_changed: bool
    duration: float


@dataclass
class EndpointResolver:
    """Resolves the hub's endpoint, again when the session has gone quiet (the hub may have moved)."""

    resolved: str | None = None
    resolved_at: float = 0.0
    host: str | None = None

    def endpoint(self, config: Config, last_handshake: float | None, now: float) -> str | None:
        assert config.hub is not None
        ep = config.hub.endpoint
        if ep.is_literal:
            return str(ep)
        quiet = last_handshake is None or now - last_handshake > RERESOLVE_AFTER
        due = self.resolved is None or self.host != str(ep) or (
            quiet and now - self.resolved_at > RERESOLVE_MIN_INTERVAL)
        if due:
            try:
                infos = socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_DGRAM)
            except OSError as e:
                log.warning("cannot resolve hub endpoint %s: %s", ep, e)
                self.resolved_at = now
                return self.resolved
            family, _, _, _, sockaddr = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
            host, port = str(sockaddr[0]), int(sockaddr[1])
            addr = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            if addr != self.resolved:
                log.info("hub endpoint %s resolves to %s", ep, addr)
            self.resolved, self.resolved_at, self.host = addr, now, str(ep)
        return self.resolved


class EndpointMemory:
    """The hub's record of where each spoke was last seen (state_dir/endpoints.json)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._cache: dict[str, str] | None = None

    def load(self) -> dict[str, str]:
        if self._cache is None:
            self._cache = {}
            if self.path is not None:
                try:
                    data = json.loads(self.path.read_text())
                    if isinstance(data, dict):
                        self._cache = {str(k): str(v) for k, v in data.items()}
                except (OSError, ValueError):
                    pass
        return self._cache

    def remember(self, endpoints: Mapping[str, str | None]) -> bool:
        """Record the peers' current endpoints (peer key -> endpoint, None if unknown); forget
        peers no longer present. True if the file was rewritten."""
        merged = {k: v for k, v in self.load().items() if k in endpoints}
        merged.update({k: v for k, v in endpoints.items() if v})
        if merged == self.load() or self.path is None:
            return False
        write_atomic(self.path, json.dumps(merged, sort_keys=True).encode(), mode=0o600)
        self._cache = merged
        return True


@dataclass
class Reconciler:
    config: Config
    backend: Backend | None = None
    private_key: str | None = field(default=None, repr=False)
    public_key: str | None = None
    resolver: EndpointResolver = field(default_factory=EndpointResolver)
    firewall_state: nft.FirewallState = field(default_factory=nft.FirewallState)
    passes: int = 0
    device_writes: int = 0
    endpoint_memory: EndpointMemory = field(default_factory=lambda: EndpointMemory(None))

    def __post_init__(self) -> None:
        if self.endpoint_memory.path is None:
            self.endpoint_memory = EndpointMemory(self.config.state_dir / "endpoints.json")

    def load_key(self) -> bool:
        """Load (or create on first start) the node's private key. True if it was created."""
        raw, created = load_or_create_private_key(self.config.wireguard.private_key_file)
        self.private_key = encode_key(raw)
        self.public_key = encode_key(public_key(raw))
        if created:
            log.info("created a new private key in %s; public key %s",
                     self.config.wireguard.private_key_file, self.public_key)
        return created

    def ensure_backend(self) -> Backend:
        if self.backend is None:
            wg = self.config.wireguard
            self.backend = select_backend(wg.backend, wg.interface, self.config.state_dir)
            log.info("using the %s WireGuard backend for %s", self.backend.name, wg.interface)
        return self.backend

    def reconcile(self, now: float | None = None, force_firewall: bool = False) -> ReconcileResult:
        """Bring everything in line with the config; raises BackendError on failure."""
        start = time.monotonic()
        config = self.config
        assert self.private_key is not None
        backend = self.ensure_backend()
        try:
            # Reading the device is also the liveness check: no separate probe on the hot path.
            actual = backend.read()
        except BackendError as e:
            log.info("%s: %s; (re)creating it", config.wireguard.interface, e)
            backend.create()
            actual = backend.read()

        want_link = link.render_link(config)
        have_link = link.read_link(config.wireguard.interface)
        if have_link is None:
            raise BackendError(f"interface {config.wireguard.interface} vanished")
        link_changes = link.diff_link(want_link, have_link)
        if link_changes:
            link.apply_link(config.wireguard.interface, link_changes)
        if config.is_hub:
            link.ensure_forwarding(True)

        # The firewall before the peers: its conntrack must see the first handshake leave, or the
        # hub's answers to a spoke that has not yet sent again look new and are dropped (found in
        # the VM test: spoke-to-spoke traffic lost for up to a keepalive after a fresh start).
        fw_changed = nft.reconcile_firewall(config, self.firewall_state, force=force_firewall)

        hub_ep = None
        if not config.is_hub:
            assert config.hub is not None
            hub_peer = actual.peers.get(config.hub.public_key)
            hub_ep = self.resolver.endpoint(config, hub_peer.last_handshake if hub_peer else None,
                                            time.time() if now is None else now)
        desired = render_device(config, self.private_key, hub_ep,
                                {k: p.last_handshake for k, p in actual.peers.items()},
                                self.endpoint_memory.load() if config.is_hub else None)
        changes = diff_device(desired, actual)
        if changes:
            backend.apply(changes)
            self.device_writes += 1
            actual = backend.read()
            leftover = diff_device(desired, actual)
            if leftover:
                raise BackendError(
                    f"{config.wireguard.interface}: the device did not take the change "
                    f"({leftover.summary()} still differ after writing)")
            log.info("%s: %s", config.wireguard.interface, changes.summary())

        self.passes += 1
        return ReconcileResult(device=actual, wg_changes=changes, link_changed=bool(link_changes),
                               firewall_changed=fw_changed, duration=time.monotonic() - start)

    def pending_rotations(self) -> list[tuple[str, str]]:
        """(name, new key) of spokes whose key rotation is not finished."""
        return [(p.name, p.next_public_key) for p in self.config.peers if p.next_public_key]

    def down(self) -> None:
        """Remove the interface (and wireguard-go with it) and the firewall table."""
        backend = self.ensure_backend()
        backend.delete()
        nft.remove_table()
