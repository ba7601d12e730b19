"""sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING. Silent without NOTIFY_SOCKET
(a container, the lab, a terminal)."""

from __future__ import annotations

import os
import time


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = None
        if self.enabled:
            import sdnotify

            self._n = sdnotify.SystemdNotifier()
        self._ready_sent = False
        self._last_status = ""

    def _send(self, text: str) -> None:
        if self._n is not None:
            self._n.notify(text)

    def ready(self, status: str) -> None:
        """READY=1 once, after the first successful reconcile."""
        if not self._ready_sent:
            self._ready_sent = True
            self.reloaded(status)

    def reloaded(self, status: str) -> None:
        # After RELOADING=1, systemd waits for READY=1 again.
        self._send(f"READY=1\nSTATUS={status}")
        self._last_status = status

    def reloading(self) -> None:
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")
