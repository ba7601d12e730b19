"""dvpnd's hand on dvpn-relay (effects): it writes the relay's configuration file (0600, only when
it changed; removed when the node needs no relay) and, unless systemd runs the relay
(dvpn-relay.path starts dvpn-relay.service when the file appears), starts the relay itself as a
process of its own session that outlives dvpnd, found again after a restart by its PID file. The
relay reads the file again by itself when it changes. Its status comes back through its status
file."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dvpnd
from dvpnd.config.model import Config
from dvpnd.relay.config import RelayConfig, render
from dvpnd.relay.plan import cert_paths
from dvpnd.util.fsutil import write_atomic
from dvpnd.util.procutil import child_env, wait_exit

log = logging.getLogger("dvpnd.relay")
STATUS_FRESH = 10.0  # seconds: an older status file is a relay that is not running


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class RelayControl:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pid_file = config.state_dir / "relay.pid"

    @property
    def spawns(self) -> bool:
        s = self.config.relay.spawn
        return s == "yes" or (s == "auto" and "INVOCATION_ID" not in os.environ)

    def apply(self, desired: RelayConfig | None) -> None:
        path = self.config.relay.config_file
        if desired is None:
            if path.exists():
                path.unlink()
                log.info("relay: not needed any more; removed %s", path)
            if self.spawns:
                self.stop()
            return
        if desired.hub is not None and self.config.relay.cert is None:
            from dvpnd.relay.tls import cert_fingerprint, ensure_self_signed  # (X.509: only a relaying hub)

            cert, key = cert_paths(self.config)
            if ensure_self_signed(cert, key, self.config.name):
                log.info("relay: made a self-signed certificate %s; spokes pin its fingerprint %s", cert,
                         cert_fingerprint(cert))
        data = (json.dumps(render(desired), indent=1, sort_keys=True) + "\n").encode()
        try:
            same = path.read_bytes() == data
        except OSError:
            same = False
        if not same:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomic(path, data, 0o600)
            what = f"listening on {desired.hub.address}:{desired.hub.port} for {len(desired.hub.spokes)} spokes" \
                if desired.hub else "links to " + ", ".join(f"{x.name} (127.0.0.1:{x.local_port})"
                                                           for x in desired.links)
            log.info("relay: configured (%s)", what)
        if self.spawns:
            self.ensure_running()
        if not same:
            self.poke()

    def poke(self) -> None:
        """Have the running relay read its file now (SIGHUP), not at its next look (a second):
        a move between UDP and TCP is waiting for it. Its PID comes from our PID file, or from
        its status file under systemd; either is checked against its command line."""
        pid = self.running_pid()
        if pid is None:
            st = self.status()
            cand = st.get("pid") if st else None
            if isinstance(cand, int) and b"dvpn" in _cmdline(cand) and b"relay" in _cmdline(cand):
                pid = cand
        if pid is not None:
            try:
                os.kill(pid, signal.SIGHUP)
            except OSError:
                pass

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if b"dvpnd.relay.main" in _cmdline(pid) else None

    def ensure_running(self) -> None:
        if self.running_pid() is not None:
            return
        r = self.config.relay
        r.status_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        logfile = self.config.state_dir / "dvpn-relay.log"
        env = child_env(PYTHONPATH=str(Path(dvpnd.__file__).resolve().parent.parent))
        with open(logfile, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "dvpnd.relay.main", "--config", str(r.config_file)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                    start_new_session=True, close_fds=True)
        write_atomic(self.pid_file, f"{proc.pid}\n".encode(), 0o644)
        log.info("relay: started dvpn-relay (pid %d; its log: %s)", proc.pid, logfile)

    def stop(self) -> None:
        pid = self.running_pid()
        if pid is not None:
            wait_exit(pid, 10, (signal.SIGTERM, signal.SIGKILL))
            log.info("relay: stopped dvpn-relay (pid %d)", pid)
        self.pid_file.unlink(missing_ok=True)

    def status(self) -> dict[str, Any] | None:
        """What the relay last wrote, if it is fresh."""
        f = self.config.relay.status_file
        try:
            if time.time() - f.stat().st_mtime > STATUS_FRESH:
                return None
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            return None
        return clean_status(doc)


def _count(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 else 0


def _seconds(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return float(v) if ok else None


def _text(v: Any) -> str | None:
    return v[:300] if isinstance(v, str) else None


def _flag(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def clean_status(doc: Any) -> dict[str, Any] | None:
    """The relay's status document as dvpnd uses it (pure): only the keys dvpnd reads, each of its
    type (a count that is not one is 0, anything else of the wrong type is None), so that whatever
    the file holds, the snapshot, the page and the metrics are built from sane values."""
    if not isinstance(doc, dict):
        return None
    out: dict[str, Any] = {"pid": _count(doc.get("pid")) or None}
    h = doc.get("hub")
    if isinstance(h, dict):
        refused = h.get("refused")
        out["hub"] = {**{k: _count(h.get(k)) for k in ("connections", "spokes", "accepted", "to_wireguard",
                                                        "to_spokes", "dropped", "probes")},
                      "refused": {str(k)[:100]: _count(v) for k, v in list(refused.items())[:64]}
                      if isinstance(refused, dict) else {}}
    links = doc.get("links")
    out["links"] = [{"name": _text(x.get("name")), "mode": _text(x.get("mode")),
                     "active": _flag(x.get("active")), "udp_ok": _flag(x.get("udp_ok")),
                     "udp_ok_for": _seconds(x.get("udp_ok_for")), "connected": _flag(x.get("connected")) is True,
                     "connected_since": _seconds(x.get("connected_since")), "last_error": _text(x.get("last_error")),
                     **{k: _count(x.get(k)) for k in ("connects", "failures", "sent", "received", "dropped",
                                                       "udp_probes")}}
                    for x in (links if isinstance(links, list) else [])[:64] if isinstance(x, dict)]
    return out
