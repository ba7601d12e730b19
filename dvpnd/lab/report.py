"""What the lab shows: each node's daemon, peers, database and status page (seen from inside
the node), and the spoke-to-spoke ping matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dvpnd.errors import DvpnError
from dvpnd.lab.cluster import load_lab, read_pid
from dvpnd.lab.node import Node, pid_alive, run_in
from dvpnd.serve import control

# --- status / down -----------------------------------------------------------------------

def status() -> list[dict[str, Any]]:
    lab = load_lab()
    if lab is None:
        return []
    out = []
    for n in lab[0]:
        entry: dict[str, Any] = {
            "name": n.name, "role": n.role, "netns": n.netns, "public_ip": n.public_ip or None,
            "overlay_ip": n.overlay_ip, "status_url": n.status_url, "state_dir": n.state_dir,
            "config": n.config, "pid": None,
        }
        if n.runs_dvpnd:
            pid = read_pid(n)
            entry["pid"] = pid if pid_alive(pid) else None
            try:
                st = control.request(Path(n.dir) / "control.sock", "status", timeout=5).get("status", {})
                entry["state"] = st.get("state")
                entry["peers"] = [{"name": p["name"], "overlay_ip": p["overlay_ip"], "state": p["state"],
                                   "handshake_age_sec": p["handshake_age_sec"]} for p in st.get("peers", [])]
                if "postgres" in st:
                    entry["postgres"] = st["postgres"]["role"]
                    b = st.get("backup") or {}
                    entry["backups"] = {r["name"]: r["backups"] for r in b.get("repos", [])}
            except DvpnError as e:
                entry["state"] = "down"
                entry["error"] = str(e)
            entry["page"] = page_state(n)
        out.append(entry)
    return out


def page_state(n: Node) -> str:
    """The node's status page as seen from inside its own namespace (the hub's is on 127.0.0.1)."""
    if not n.status_url:
        return "none"
    r = run_in(n, ["curl", "-s", "--max-time", "3", n.status_url], check=False, timeout=10)
    try:
        return f"{n.status_url}: {json.loads(r.stdout)['state']}"
    except (ValueError, KeyError, TypeError):
        return f"{n.status_url}: no answer"


def format_status(entries: list[dict[str, Any]]) -> str:
    lines = []
    for e in entries:
        if e["role"] == "router":
            continue
        head = f"{e['name']:<9} {e['role']:<7} public {e['public_ip'] or '-':<15} overlay {e['overlay_ip'] or '-':<11}"
        if e["role"] in ("hub", "spoke"):
            head += f" dvpnd pid {e['pid'] or '-':<7} {e.get('state', '?')}"
            peers = ", ".join(f"{p['name']} {p['state']}"
                              + (f" ({p['handshake_age_sec']}s)" if p["handshake_age_sec"] is not None else "")
                              for p in e.get("peers", []))
            head += f"  peers: {peers or '-'}"
            if e.get("postgres"):
                repos = ", ".join(f"{n} {k}" for n, k in (e.get("backups") or {}).items())
                head += f"  postgres: {e['postgres']}" + (f", backups: {repos}" if repos else "")
            if e.get("page"):
                head += f"  page {e['page']}"
        lines.append(head)
    return "\n".join(lines)


def ping_matrix(nodes: list[Node], count: int = 3) -> list[tuple[str, str, bool, str]]:
    """Ping every spoke's overlay address from every other spoke (through the hub)."""
    spokes = [n for n in nodes if n.role == "spoke"]
    out = []
    for a in spokes:
        for b in spokes:
            if a is b:
                continue
            assert b.overlay_ip is not None
            r = run_in(a, ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", b.overlay_ip],
                       check=False)
            summary = next((ln for ln in r.stdout.splitlines() if "packets transmitted" in ln), r.stderr.strip())
            out.append((a.name, b.name, r.returncode == 0, summary))
    return out
