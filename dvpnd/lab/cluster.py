"""The lab: the seed's topology on one machine, in network namespaces the lab creates and removes.

    outside (203.0.113.10) ── router ── hub (192.0.2.10, UDP 51820)
                                 ├──── spoke-a (198.51.100.18)
                                 ├──── spoke-b (198.51.100.34)
                                 └──── spoke-c (198.51.100.50)

Every node runs the real dvpnd with its own YAML and state directory, in its own network
namespace; each generates its own key and only public keys are exchanged. wireguard-go
keeps its sockets in /var/run/wireguard, which all namespaces share, so every command run
in a node (dvpnd, and through it wireguard-go) gets a private bind mount of the node's own
directory there; that is what lets every node's interface be called wg0. Nothing is done in
the machine's own network namespace: links are created inside the lab's namespaces."""

from __future__ import annotations

import json
import os
import signal
import string
import subprocess
import sys
from dataclasses import asdict
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from dvpnd.errors import DvpnError
from dvpnd.lab.node import LAB_DIR, Node, node_argv, node_env, pid_alive, run_in, wait_until
from dvpnd.roster.authority import Authority
from dvpnd.roster.model import Member
from dvpnd.serve import control
from dvpnd.util.fsutil import write_yaml
from dvpnd.util.procutil import wait_exit, wait_exit_all
from dvpnd.wireguard.uapi import socket_peer_pid

PREFIX = os.environ.get("DVPN_LAB_PREFIX", "dvpn-")
WG_RUN = Path("/run/wireguard")
HUB_PUBLIC = "192.0.2.10"
HUB_B_PUBLIC = "192.0.2.242"  # the second hub (--hubs 2), on a /28 of its own
HUB_B_TRANSIT = "10.90.0.0/24"
OUTSIDE_PUBLIC = "203.0.113.10"
# 24 on /28s as before, the rest on /31s of 203.0.113.0/24; wireguard-go's inotify instances
# (check_inotify) allow fewer on most machines: about 120 routed, 60 confidential
MAX_SPOKES = 120
LAB_NETWORK = "10.88.0.0/24"


def spoke_name(i: int) -> str:
    """spoke-a ... spoke-z, then spoke-27, spoke-28, ... (the lab's 27th spoke on)."""
    return f"spoke-{string.ascii_lowercase[i]}" if i < 26 else f"spoke-{i + 1}"


def spoke_public(i: int) -> str:
    """Spoke i's public address: the first 15 on /28s of their own (198.51.100.18, .34, ...), the
    next 9 too (192.0.2.18, .34, ...; the hub's own /28 is 192.0.2.0/28); from the 25th on, a /31
    each in 203.0.113.128/25 and then 203.0.113.16-127 (the outside node keeps 203.0.113.0/28)."""
    if i < 15:
        return f"198.51.100.{16 * (i + 1) + 2}"
    if i < 24:
        return f"192.0.2.{16 * (i - 14) + 2}"
    j = i - 24
    return f"203.0.113.{128 + 2 * j + 1}" if j < 64 else f"203.0.113.{16 + 2 * (j - 64) + 1}"


def _prefix(public_ip: str) -> int:
    """A spoke's link prefix: /31 in 203.0.113.0/24, /28 elsewhere."""
    return 31 if public_ip.startswith("203.0.113.") else 28


def plan(spokes: int, backend: str, hubs: int = 1) -> list[Node]:
    """The lab's nodes and addresses (pure)."""
    nodes = [Node("router", "router", PREFIX + "router", "", None, None, None, None, str(LAB_DIR / "router")),
             Node("outside", "outside", PREFIX + "outside", OUTSIDE_PUBLIC, None, None, None, None,
                  str(LAB_DIR / "outside"))]
    d = LAB_DIR / "hub"
    nodes.append(Node("hub", "hub", PREFIX + "hub", HUB_PUBLIC, "10.88.0.1", "http://127.0.0.1:8000/status",
                      str(d / "state"), str(d / "dvpnd.yaml"), str(d)))
    if hubs > 1:
        d = LAB_DIR / "hub-b"
        nodes.append(Node("hub-b", "hub", PREFIX + "hub-b", HUB_B_PUBLIC, "10.88.0.1", "http://127.0.0.1:8000/status",
                          str(d / "state"), str(d / "dvpnd.yaml"), str(d)))
    for i in range(spokes):
        name = spoke_name(i)
        d = LAB_DIR / name
        pub = spoke_public(i)
        nodes.append(Node(name, "spoke", PREFIX + name, pub, f"10.88.0.{11 + i}",
                          f"http://{pub}:8000/status", str(d / "state"), str(d / "dvpnd.yaml"), str(d)))
    return nodes


def _links(nodes: list[Node]) -> list[tuple[Node, str, str]]:
    """(node, router-side address/prefix, node-side address/prefix) for every node on the router."""
    out = []
    for n in nodes:
        if n.role == "outside":
            out.append((n, "203.0.113.1/28", f"{n.public_ip}/28"))
        elif n.role == "hub" and n.public_ip == HUB_PUBLIC:
            out.append((n, "192.0.2.1/28", f"{n.public_ip}/28"))
        elif n.role == "hub":
            first3, last = n.public_ip.rsplit(".", 1)
            out.append((n, f"{first3}.{int(last) - 1}/28", f"{n.public_ip}/28"))
        elif n.role == "spoke":
            first3, last = n.public_ip.rsplit(".", 1)
            bits = _prefix(n.public_ip)
            out.append((n, f"{first3}.{int(last) - 1}/{bits}", f"{n.public_ip}/{bits}"))
    return out


PRIMARY_OVERLAY = "10.88.0.11"  # spoke-a


def pg_paths(node: Node) -> dict[str, str]:
    d = Path(node.dir)
    return {"data_dir": str(d / "postgres" / "data"), "socket_dir": str(d / "postgres" / "run"),
            "password_file": str(d / "pg-replication.password"), "pgbackrest": str(d / "pgbackrest")}


def render_node_config(node: Node, backend: str, hub_key: str | None, postgres: bool = False,
                       authority: str | None = None, hub_b_key: str | None = None,
                       offsite: dict[str, Any] | None = None) -> dict[str, Any]:
    """A node's dvpnd.yaml in the lab (pure); with `authority`, in confidential mode; with
    `hub_b_key`, the spokes use two hubs; with `offsite`, the spokes' backups go offsite too."""
    assert node.state_dir is not None
    cfg: dict[str, Any] = {
        "role": node.role,
        "name": node.name,
        "state_dir": node.state_dir,
        "overlay": {"network": "10.88.0.0/24"},
        "wireguard": {"interface": "wg0", "backend": backend},
        "control": {"socket": str(Path(node.dir) / "control.sock")},
        "reconcile_interval": 10,
        # The hub as in production: its page on 127.0.0.1 only, the firewall's defaults (22/TCP,
        # 51820/UDP); a spoke's page faces the Internet on 8000, as the seed says.
    }
    if authority is not None:
        cfg["overlay"].update({"mode": "confidential", "authority": authority})
        # names from the roster on every node; the rest to a stub upstream the tests run in the
        # outside namespace (no upstream there: SERVFAIL after 2 s, nothing leaves the lab)
        cfg["dns"] = {"enabled": True, "upstream": [OUTSIDE_PUBLIC]}
    # the TCP fallback's relay: its files in the node's directory; every hub listens on 443
    cfg["relay"] = {"config_file": str(Path(node.dir) / "relay.json"),
                    "status_file": str(Path(node.dir) / "relay-status.json")}
    if node.role == "hub":
        cfg["public_endpoint"] = f"{node.public_ip}:51820"
        cfg["relay"]["enabled"] = True
        if node.public_ip == HUB_B_PUBLIC:
            cfg["overlay"]["transit_network"] = HUB_B_TRANSIT
    if node.role == "spoke":
        cfg["overlay"]["address"] = node.overlay_ip
        cfg["relay"]["udp_holddown"] = 5  # (lab: back to UDP in seconds)
        if hub_b_key is None:
            cfg["hub"] = {"public_key": hub_key, "endpoint": f"{HUB_PUBLIC}:51820"}
        else:
            cfg["hubs"] = [{"name": "hub", "public_key": hub_key, "endpoint": f"{HUB_PUBLIC}:51820"},
                           {"name": "hub-b", "public_key": hub_b_key, "endpoint": f"{HUB_B_PUBLIC}:51820",
                            "transit_network": HUB_B_TRANSIT}]
            # the lab's hold-down is short so that the tests see a failback in seconds
            cfg["probe"] = {"interval": 0.2, "window": 1.0, "holddown": 3}
        if postgres:
            paths = pg_paths(node)
            cfg["postgres"] = {"primary": PRIMARY_OVERLAY, "data_dir": paths["data_dir"],
                               "socket_dir": paths["socket_dir"], "password_file": paths["password_file"]}
            # pgBackRest: its home and local repository in the node's directory (the postgres user
            # reaches them); one stanza for the cluster, offsite on the S3 stand-in, encrypted
            pgbr: dict[str, Any] = {"home": paths["pgbackrest"], "repo": paths["pgbackrest"] + "/repo",
                                    "stanza": "lab", "archive_timeout": 10, "runner": "direct"}
            if offsite is not None:
                pgbr["offsite"] = dict(offsite, region="us-east-1", uri_style="path", path="/lab")
            cfg["backup"] = {"pgbackrest": pgbr}
    return cfg


# --- running things inside a node --------------------------------------------------------

def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise DvpnError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _ns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _sysctl(ns: str, key: str, value: str) -> None:
    _ip("netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")


# --- state file --------------------------------------------------------------------------

def load_lab() -> tuple[list[Node], dict[str, Any]] | None:
    f = LAB_DIR / "lab.json"
    if not f.exists():
        return None
    data = json.loads(f.read_text())
    return [Node(**n) for n in data["nodes"]], data


def save_lab(nodes: list[Node], meta: dict[str, Any]) -> None:
    from dvpnd.util.fsutil import write_atomic

    data = dict(meta, nodes=[asdict(n) for n in nodes])
    write_atomic(LAB_DIR / "lab.json", json.dumps(data, indent=2).encode())


# --- up ----------------------------------------------------------------------------------

def build_network(nodes: list[Node]) -> None:
    router = next(n for n in nodes if n.role == "router")
    if not _ns_exists(router.netns):
        _ip("netns", "add", router.netns)
    _ip("-n", router.netns, "link", "set", "lo", "up")
    _sysctl(router.netns, "net.ipv4.ip_forward", "1")
    for node, raddr, naddr in _links(nodes):
        if _ns_exists(node.netns):
            continue
        _ip("netns", "add", node.netns)
        _ip("-n", node.netns, "link", "set", "lo", "up")
        rif = f"r-{node.name}"[:15]
        _ip("-n", router.netns, "link", "add", rif, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
        _ip("-n", router.netns, "addr", "add", raddr, "dev", rif)
        _ip("-n", router.netns, "link", "set", rif, "up")
        _ip("-n", node.netns, "addr", "add", naddr, "dev", "eth0")
        _ip("-n", node.netns, "link", "set", "eth0", "up")
        _ip("-n", node.netns, "route", "add", "default", "via", raddr.split("/")[0])


def read_pid(node: Node) -> int | None:
    try:
        return int((Path(node.dir) / "dvpnd.pid").read_text())
    except (OSError, ValueError):
        return None


def start_daemon(node: Node, extra_env: dict[str, str] | None = None, python: str | None = None) -> int:
    """Start dvpnd in the node (on `python`, this one's by default), detached, logging to the
    node's dvpnd.log; return its PID."""
    assert node.config is not None
    log = open(Path(node.dir) / "dvpnd.log", "ab")
    dvpnd = [python or sys.executable, "-m", "dvpnd.daemon", "--config", node.config]
    proc = subprocess.Popen(node_argv(node, dvpnd), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            env=dict(node_env(node), **(extra_env or {})), start_new_session=True)
    log.close()
    (Path(node.dir) / "dvpnd.pid").write_text(str(proc.pid))
    return proc.pid


def stop_daemon(node: Node, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    pid = read_pid(node)
    if pid_alive(pid):
        assert pid is not None
        wait_exit(pid, timeout, (sig, signal.SIGKILL))


def wait_ready(node: Node, timeout: float = 30) -> dict[str, Any]:
    """Wait until the node's daemon answers and has done its first reconcile."""
    sock = Path(node.dir) / "control.sock"
    last = ["no answer"]

    def ready() -> dict[str, Any] | None:
        try:
            st: dict[str, Any] = control.request(sock, "status", timeout=5).get("status", {})
            if st.get("ready") and st.get("interface_up"):
                return st
            last[0] = st.get("reconcile_error") or "not ready yet"
        except DvpnError as e:
            last[0] = str(e)
        if not pid_alive(read_pid(node)):
            raise DvpnError(f"{node.name}: dvpnd exited; see {Path(node.dir) / 'dvpnd.log'}")
        return None

    return wait_until(ready, timeout, 0.2, lambda: f"{node.name}: dvpnd not ready after {timeout:.0f}s: {last[0]}")


def relay_fingerprint(hub: Node) -> str:
    """The pin of a lab hub's relay certificate (made here before the hub first starts)."""
    from dvpnd.relay.tls import cert_fingerprint, ensure_self_signed

    assert hub.state_dir is not None
    cert, key = Path(hub.state_dir) / "relay.crt", Path(hub.state_dir) / "relay.key"
    Path(hub.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_self_signed(cert, key, hub.name)
    return cert_fingerprint(cert)


def set_transport(spoke: Node, transport: str) -> None:
    """Carry a spoke's tunnels to every hub over `transport` (tcp: the relay on the hubs' TCP 443),
    by editing its dvpnd.yaml and reloading dvpnd, as an operator would."""
    from dvpnd.config.yamlsrc import load_yaml_file

    lab = load_lab()
    assert lab is not None and spoke.config is not None
    hubs = {n.public_ip: n for n in lab[0] if n.role == "hub"}
    doc = load_yaml_file(Path(spoke.config)).data
    for h in [doc["hub"]] if "hub" in doc else doc["hubs"]:
        h.pop("relay_fingerprint", None)
        h["transport"] = transport
        if transport != "udp":
            h["relay_fingerprint"] = relay_fingerprint(hubs[h["endpoint"].rsplit(":", 1)[0]])
    write_yaml(Path(spoke.config), doc)
    reply = control.request(Path(spoke.dir) / "control.sock", "reload", timeout=30)
    if not reply.get("ok"):
        raise DvpnError(f"{spoke.name} refused the new transport: {reply.get('problems')}")


def block_udp(node: Node, on: bool = True) -> None:
    """The lab router drops every UDP datagram to and from `node` (a network that passes TCP only),
    or stops doing so."""
    table = f"labudp_{node.name.replace('-', '_')}"
    router = next(n for n in (load_lab() or ([], {}))[0] if n.role == "router")
    if _nft_has(router, table):
        _ip("netns", "exec", router.netns, "nft", "delete", "table", "inet", table)
    if on:
        rules = f"""table inet {table} {{
  chain forward {{ type filter hook forward priority -10; policy accept;
    ip saddr {node.public_ip} meta l4proto udp counter drop
    ip daddr {node.public_ip} meta l4proto udp counter drop
  }}
}}"""
        r = subprocess.run(["ip", "netns", "exec", router.netns, "nft", "-f", "-"], input=rules, text=True,
                           capture_output=True)
        if r.returncode != 0:
            raise DvpnError(f"nft in {router.netns}: {r.stderr.strip()}")


def _nft_has(node: Node, table: str) -> bool:
    r = subprocess.run(["ip", "netns", "exec", node.netns, "nft", "list", "table", "inet", table],
                       capture_output=True, text=True)
    return r.returncode == 0


def kill_hard(node: Node) -> None:
    """A dead droplet, as the other nodes see it: the node's link down, its dvpnd and every
    wireguard-go killed with SIGKILL (nothing is cleaned up; its state directory stays)."""
    _ip("netns", "exec", node.netns, "ip", "link", "set", "eth0", "down")
    for pid in [read_pid(node), *wg_go_pids(node)]:
        if pid and pid_alive(pid):
            wait_exit(pid, 5, (signal.SIGKILL,))


def revive(node: Node) -> None:
    """The node back after kill_hard, as after a reboot: its link and route up, dvpnd started
    from its state directory (if it is not running), ready."""
    _ip("netns", "exec", node.netns, "ip", "link", "set", "eth0", "up")
    gateway = next(r for n, r, _ in _links([node]) if n is node).split("/")[0]
    _ip("netns", "exec", node.netns, "ip", "route", "replace", "default", "via", gateway)
    if not pid_alive(read_pid(node)):
        start_daemon(node)
    wait_ready(node)


def pubkey(node: Node, *flags: str) -> str:
    r = run_in(node, [sys.executable, "-m", "dvpnd.cli", "pubkey", "--config", str(node.config), *flags])
    return r.stdout.strip()


MODES = ("confidential", "routed")


def authority() -> Authority:
    """The lab's roster authority (the operator's machine, in production: never the hub)."""
    return Authority(LAB_DIR / "authority")


def same_shape(existing: tuple[list[Node], dict[str, Any]], spokes: int, backend: str, postgres: bool,
               mode: str, hubs: int) -> bool:
    """Whether the lab that is up (load_lab()) has this shape: `up` repairs such a lab, and
    refuses to change the shape of one that differs."""
    nodes, meta = existing
    return (len([n for n in nodes if n.role == "spoke"]) == spokes and meta.get("backend") == backend
            and bool(meta.get("postgres")) == postgres and meta.get("mode", "routed") == mode
            and int(meta.get("hubs", 1)) == hubs)


def up(spokes: int = 3, backend: str = "userspace", wait_handshakes: float = 60,
       postgres: bool = False, mode: str | None = None, hubs: int = 1) -> list[Node]:
    """Build (or repair) the lab; return its nodes once every spoke has handshaken."""
    if os.geteuid() != 0:
        raise DvpnError("the lab needs root (network namespaces, mounts, nftables)")
    if not 1 <= spokes <= MAX_SPOKES:
        raise DvpnError(f"--spokes must be between 1 and {MAX_SPOKES}")
    existing = load_lab()
    if mode is None:  # a running lab keeps its mode (a repair); a new one is confidential
        mode = str(existing[1].get("mode", "routed")) if existing is not None else "confidential"
    if existing is not None:
        nodes, meta = existing
        if not same_shape(existing, spokes, backend, postgres, mode, hubs):
            raise DvpnError(
                f"a lab with {meta.get('spokes')} spokes ({meta.get('backend')}, {meta.get('mode', 'routed')}"
                f"{', postgres' if meta.get('postgres') else ''}) is up; "
                "run 'dvpnctl lab down' first to change its shape")
    else:
        nodes, meta = plan(spokes, backend, hubs), {"spokes": spokes, "backend": backend, "postgres": postgres,
                                                    "mode": mode, "hubs": hubs,
                                                    "created_wg_run": not WG_RUN.exists()}
    if mode not in MODES:
        raise DvpnError(f"--mode must be one of {', '.join(MODES)}")
    if hubs not in (1, 2) or (hubs == 2 and mode != "confidential"):
        raise DvpnError("--hubs is 1, or 2 in confidential mode (in routed mode spokes on different hubs "
                        "could not reach each other)")
    confidential = mode == "confidential"
    if existing is None:
        check_inotify(spokes, hubs, confidential, backend)
    LAB_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The database servers run as the postgres user, which must reach its directories.
    os.chmod(LAB_DIR, 0o711 if postgres else 0o700)
    WG_RUN.mkdir(mode=0o755, exist_ok=True)
    for n in nodes:
        Path(n.dir).mkdir(parents=True, exist_ok=True)
        (Path(n.dir) / "wireguard").mkdir(exist_ok=True)
    save_lab(nodes, meta)
    build_network(nodes)
    offsite = None
    if postgres:
        from dvpnd.lab import pg as labpg

        offsite = labpg.s3_up(next(n for n in nodes if n.role == "outside"))

    auth_pub = None
    if confidential:
        auth = authority()
        auth_pub = auth.public() if auth.key_file.exists() else auth.init()
    all_hubs = [n for n in nodes if n.role == "hub"]
    hub = all_hubs[0]
    for h in all_hubs:
        assert h.config is not None
        relay_fingerprint(h)  # (the relay's certificate, before the hub starts: spokes pin it)
        if not Path(h.config).exists():
            write_yaml(Path(h.config), render_node_config(h, backend, None, authority=auth_pub))
        (Path(h.dir) / "peers.d").mkdir(exist_ok=True)
        if not pid_alive(read_pid(h)):
            start_daemon(h)
    for h in all_hubs:
        wait_ready(h)
    hub_key = pubkey(hub)
    hub_b_key = pubkey(all_hubs[1]) if len(all_hubs) > 1 else None

    added = False
    for s in (n for n in nodes if n.role == "spoke"):
        assert s.config is not None
        if not Path(s.config).exists():
            write_yaml(Path(s.config), render_node_config(s, backend, hub_key, postgres, authority=auth_pub,
                                                          hub_b_key=hub_b_key, offsite=offsite))
        if not pid_alive(read_pid(s)):
            start_daemon(s)
        wait_ready(s)
        if confidential:
            added |= admit(s)
            continue
        peer_file = Path(hub.dir) / "peers.d" / f"{s.name}.yaml"
        if not peer_file.exists():
            # The runbook's "add a spoke": the spoke made its key; only the public half travels.
            write_yaml(peer_file, {"name": s.name, "public_key": pubkey(s), "address": s.overlay_ip})
            added = True
    if added and confidential:
        for h in all_hubs:
            publish(h, authority().roster_file)
    elif added:
        reply = control.request(Path(hub.dir) / "control.sock", "reload")
        if not reply.get("ok"):
            raise DvpnError(f"hub rejected the reload: {reply.get('problems')}")
    wait_handshakes_done(nodes, wait_handshakes)
    if postgres:
        from dvpnd.lab import pg as labpg

        labpg.up(nodes)
    return nodes


INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_instances")


def wireguard_go_count(spokes: int, hubs: int, confidential: bool) -> int:
    """How many wireguard-go a userspace lab runs: one a hub, one or (confidential) two a spoke."""
    return hubs + spokes * (2 if confidential else 1)


def check_inotify(spokes: int, hubs: int, confidential: bool, backend: str) -> None:
    """Each wireguard-go holds an inotify instance (it watches its UAPI socket), and the kernel
    allows a user fs.inotify.max_user_instances of them (128 by default): past that, the next
    wireguard-go exits with "too many open files". Said before anything is built."""
    from dvpnd.wireguard.backends import kernel_module_available

    if backend == "kernel" or (backend == "auto" and kernel_module_available()):
        return
    try:
        limit = int(INOTIFY_LIMIT.read_text())
    except (OSError, ValueError):
        return
    need = wireguard_go_count(spokes, hubs, confidential)
    if need > limit - 4:  # (a few for whatever else runs as root)
        most = (limit - 4 - hubs) // (2 if confidential else 1)
        raise DvpnError(f"a {'confidential' if confidential else 'routed'} lab of {spokes} spokes runs {need} "
                        f"wireguard-go, each holding an inotify instance; this machine allows {limit} per user "
                        f"({INOTIFY_LIMIT}): at most {most} spokes")


def admit(spoke: Node) -> bool:
    """The operator's `dvpnctl roster add` for a lab spoke (its keys made on the spoke; only the
    public halves travel); False if it is a member already."""
    auth = authority()
    current = auth.current()
    if current is not None and current.member(spoke.name) is not None:
        return False
    transit = pubkey(spoke)
    overlay = pubkey(spoke, "--overlay")
    assert spoke.overlay_ip is not None
    member = Member(name=spoke.name, address=IPv4Address(spoke.overlay_ip), transit_key=transit, overlay_key=overlay)
    auth.amend((current.members if current else ()) + (member,), 30 * 86400, IPv4Network(LAB_NETWORK))
    return True


def publish(node: Node, roster_file: Path) -> dict[str, Any]:
    """`dvpnctl roster publish` on a node (the hub)."""
    reply = control.request(Path(node.dir) / "control.sock", "roster-publish", file=str(roster_file))
    if not reply.get("ok"):
        raise DvpnError(f"{node.name} refused the roster: {reply.get('problems')}")
    return reply


def wait_handshakes_done(nodes: list[Node], timeout: float) -> None:
    """Wait until the hub sees every spoke up and every spoke sees the hub up (and, in
    confidential mode, holds the hub's roster)."""
    missing: set[str] = {n.name for n in nodes if n.runs_dvpnd}
    hub = next(n for n in nodes if n.role == "hub")

    def all_up() -> bool:
        missing.clear()
        serial = control.request(Path(hub.dir) / "control.sock", "status").get("status", {}).get(
            "roster") or {}
        for n in nodes:
            if not n.runs_dvpnd:
                continue
            st = control.request(Path(n.dir) / "control.sock", "status").get("status", {})
            peers = st.get("peers", [])
            if not peers or any(p.get("state") not in ("up", "idle") for p in peers):
                missing.add(n.name)
            if (st.get("roster") or {}).get("serial") != serial.get("serial"):
                missing.add(n.name)
        return not missing

    wait_until(all_up, timeout, 0.5, lambda: f"nodes with peers that have not handshaken after {timeout:.0f}s: "
                                             f"{', '.join(sorted(missing))}")


def down() -> list[str]:
    """Remove everything the lab made. Returns what was removed, for the user."""
    done: list[str] = []
    lab = load_lab()
    nodes = lab[0] if lab else plan(MAX_SPOKES, "userspace")
    meta = lab[1] if lab else {}
    wg_pids: list[int] = []
    from dvpnd.lab import pg as labpg
    from dvpnd.wireguard.uapi import SOCKET_DIR

    for n in nodes:
        if n.role == "spoke":
            done += labpg.stop_server(n)
    done += labpg.s3_down()
    for n in nodes:
        if n.runs_dvpnd:
            pid = read_pid(n)
            if pid_alive(pid):
                stop_daemon(n)
                done.append(f"stopped dvpnd in {n.name} (pid {pid})")
            wg_pids += wg_go_pids(n)
            wg_pids += [p for p in [relay_pid(n)] if p]
    # The lab's wireguard-go and relays (found by their sockets and PID files in the lab's own
    # directories) are told to stop, all at once, before their namespaces go: a wireguard-go
    # whose namespace is deleted under it does not notice for a long while (5 s each, then a
    # SIGKILL, made every lab down take about a minute)
    # and what is left of a spoke's pgBackRest run: its runner dies with dvpnd, its pgbackrest
    # with the runner (SIGKILL), but pgbackrest's own workers then stay (found after a lab down
    # during a verify); they are told apart by the lab's own configuration path in their argv
    wg_pids += [pid for n in nodes if n.role == "spoke" for pid in _pgbackrest_pids(Path(n.dir) / "pgbackrest")]
    wait_exit_all(wg_pids, 5, (signal.SIGTERM, signal.SIGKILL))
    done += [f"wireguard-go {pid} gone" for pid in wg_pids]
    for n in nodes:
        if _ns_exists(n.netns):
            _ip("netns", "del", n.netns)
            done.append(f"removed namespace {n.netns}")
    if LAB_DIR.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(LAB_DIR)], check=False)
        done.append(f"removed {LAB_DIR}")
    if meta.get("created_wg_run") and SOCKET_DIR.exists():
        try:
            SOCKET_DIR.rmdir()
        except OSError:
            pass
    return done


def _pgbackrest_pids(home: Path) -> list[int]:
    """pgbackrest processes run with the configuration in `home` (a lab node's own directory)."""
    want = f"--config={home}/pgbackrest.conf".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"pgbackrest") and want in argv:
            pids.append(int(proc.name))
    return pids


def relay_pid(node: Node) -> int | None:
    """The node's dvpn-relay, if dvpnd started one (by its PID file, checked against its command)."""
    if node.state_dir is None:
        return None
    try:
        pid = int((Path(node.state_dir) / "relay.pid").read_text().strip())
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"dvpnd.relay.main" in cmd else None


def wg_go_pid(node: Node) -> int | None:
    """The PID of the wireguard-go serving the node's wg0."""
    return socket_peer_pid(Path(node.dir) / "wireguard" / "wg0.sock")


def wg_go_pids(node: Node) -> list[int]:
    """Every wireguard-go of the node (wg0, and a confidential spoke's transit wgt0)."""
    pids = (socket_peer_pid(sock) for sock in sorted((Path(node.dir) / "wireguard").glob("*.sock")))
    return [p for p in pids if p]


def find_node(name: str) -> Node:
    lab = load_lab()
    if lab is None:
        raise DvpnError("no lab is up (run 'dvpnctl lab up')")
    for n in lab[0]:
        if n.name == name or n.netns == name:
            return n
    raise DvpnError(f"no lab node named {name!r} (nodes: {', '.join(n.name for n in lab[0])})")


def exec_in(name: str, argv: list[str]) -> int:
    node = find_node(name)
    if not argv:
        raise DvpnError("nothing to run: dvpnctl lab exec NODE -- CMD...")
    return subprocess.call(node_argv(node, argv), env=node_env(node))
