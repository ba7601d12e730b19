"""Control-plane figures, run inside a scratch network namespace (see bench/__main__.py).

  python -m bench.ctl '{"sizes": [1000, 10000], "add_among": 5000, "repeat": 3, "dir": "...",
                        "backend": "userspace"}'

Prints a JSON list of figures. Each dvpnd figure is measured beside its anchor, the
wireguard-tools command a user would otherwise run, on the same device in the same run:
wireguard-go ("userspace", the default), or the kernel's module ("kernel", run inside the VM by
packaging/vmbench; no firewall row there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.stats import Figure, timed
from dvpnd.config.load import load_config
from dvpnd.daemon.reconcile import Reconciler
from dvpnd.firewall import nft, ruleset
from dvpnd.wireguard.backends import Backend
from dvpnd.wireguard.kernel import KernelBackend
from dvpnd.wireguard.keys import encode_key
from dvpnd.wireguard.userspace import UserspaceBackend


def peer_keys(n: int) -> list[str]:
    return [encode_key(os.urandom(32)) for _ in range(n)]


def write_hub(d: Path, keys: list[str], firewall_on: bool = False) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    peers = [{"name": f"s{i}", "public_key": k, "address": f"10.88.{(i + 11) // 250}.{(i + 11) % 250 + 2}"}
             for i, k in enumerate(keys)]
    cfg = {"role": "hub", "name": "bench", "state_dir": str(d / "state"),
           "overlay": {"network": "10.88.0.0/16"}, "firewall": {"enabled": firewall_on},
           "status": {"enabled": False}, "metrics": {"enabled": False},
           "control": {"socket": str(d / "control.sock")}, "peers": peers}
    path = d / "dvpnd.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def wg_conf(path: Path, private_key: str, keys: list[str], cfg_path: Path) -> Path:
    config = load_config(cfg_path)
    lines = ["[Interface]", f"PrivateKey = {private_key}", "ListenPort = 51820", ""]
    for p in config.peers:
        lines += ["[Peer]", f"PublicKey = {p.public_key}", f"AllowedIPs = {p.address}/32",
                  "PersistentKeepalive = 25", ""]
    path.write_text("\n".join(lines))
    os.chmod(path, 0o600)
    return path


def device(d: Path, kind: str) -> Backend:
    return KernelBackend("wg0") if kind == "kernel" else UserspaceBackend("wg0", d)


_set_aside = 0


def fresh_device(d: Path, kind: str) -> Backend:
    """An empty wg0. The kernel's old one is renamed out of the way, not deleted: deleting a
    device waits a grace period per peer, minutes for thousands of peers in a TCG guest (the
    guest is thrown away after the run)."""
    global _set_aside
    b = device(d, kind)
    if kind == "kernel" and Path("/sys/class/net/wg0").exists():
        _set_aside += 1
        subprocess.run(["ip", "link", "set", "dev", "wg0", "down"], check=True)
        subprocess.run(["ip", "link", "set", "dev", "wg0", "name", f"wgold{_set_aside}"], check=True)
    else:
        b.delete()  # (wireguard-go: waits for the old one to be gone)
    b.create()
    return b


def wg(*args: str) -> None:
    subprocess.run(["wg", *args], check=True, stdout=subprocess.DEVNULL)


def progress(what: str) -> None:
    """A line on stderr as each figure is done (the VM's guest shows them as they come)."""
    print(f"bench.ctl: {what}", file=sys.stderr, flush=True)


def run(opts: dict[str, Any]) -> list[Figure]:
    d = Path(opts["dir"])
    repeat = int(opts["repeat"])
    kind = opts.get("backend", "userspace")
    where = "userspace" if kind == "userspace" else "kernel, in the VM"
    figs: list[Figure] = []

    # cold apply of N peers vs `wg setconf`
    for n in opts["sizes"]:
        keys = peer_keys(n)
        cfg_path = write_hub(d / f"cold{n}", keys)
        load_s, config = timed(lambda: load_config(cfg_path))
        ours, anchor = [], []
        for i in range(repeat):
            backend = fresh_device(d, kind)
            r = Reconciler(config, backend=backend)
            r.load_key()
            progress(f"cold apply, {n} peers, round {i + 1}: dvpnd")
            ours.append(timed(r.reconcile)[0])
            assert len(backend.read().peers) == n
            fresh_device(d, kind)
            conf = wg_conf(d / "wg.conf", r.private_key or "", keys, cfg_path)
            progress(f"cold apply, {n} peers, round {i + 1}: wg setconf")
            anchor.append(timed(lambda: wg("setconf", "wg0", str(conf)))[0])
        ratio = (sorted(ours)[len(ours) // 2]) / (sorted(anchor)[len(anchor) // 2])
        figs.append(Figure(f"cold apply, {n} peers ({where})", "s", ours, "wg setconf", anchor, "≤ 1.5×",
                           ratio <= 1.5, f"config load {load_s:.2f}s, not included"))
        progress(figs[-1].row())

    # one spoke added among N vs `wg syncconf`, and a reconcile with nothing to do vs `wg show dump`
    n = opts["add_among"]
    keys = peer_keys(n + 1)
    base_cfg = load_config(write_hub(d / "base", keys[:n]))
    plus_path = write_hub(d / "plus", keys)
    plus_cfg = load_config(plus_path)
    backend = fresh_device(d, kind)
    r = Reconciler(base_cfg, backend=backend)
    r.load_key()
    r.reconcile()
    conf_plus = wg_conf(d / "plus.conf", r.private_key or "", keys, plus_path)
    ours, anchor = [], []

    def remove_last() -> None:
        wg("set", "wg0", "peer", keys[n], "remove")

    for _ in range(repeat):
        r.config = plus_cfg
        ours.append(timed(r.reconcile)[0])
        remove_last()
        anchor.append(timed(lambda: wg("syncconf", "wg0", str(conf_plus)))[0])
        remove_last()
        r.config = base_cfg
    ratio = sorted(ours)[len(ours) // 2] / sorted(anchor)[len(anchor) // 2]
    suffix = "" if kind == "userspace" else f" ({where})"
    figs.append(Figure(f"one spoke added among {n}{suffix}", "s", ours, "wg syncconf", anchor, "≤ 1.0×", ratio <= 1.0))
    progress(figs[-1].row())

    r.config = base_cfg
    r.reconcile()
    writes = r.device_writes
    ours = [timed(r.reconcile)[0] for _ in range(max(repeat, 5))]
    anchor = [timed(lambda: subprocess.run(["wg", "show", "wg0", "dump"], check=True,
                                           stdout=subprocess.DEVNULL))[0] for _ in range(max(repeat, 5))]
    zero = r.device_writes == writes
    ratio = sorted(ours)[len(ours) // 2] / sorted(anchor)[len(anchor) // 2]
    figs.append(Figure(f"reconcile with nothing to do, {n} peers{suffix}", "s", ours, "wg show wg0 dump", anchor,
                       "≤ 1.0×, zero writes", ratio <= 1.0 and zero,
                       f"device writes during these passes: {r.device_writes - writes}"))
    if kind != "userspace":
        return figs  # (the kernel's devices go with the guest: see fresh_device)
    device(d, kind).delete()

    # firewall: rule count and apply time with 10 vs 1000 spokes
    counts, times = {}, {}
    for n in (10, 1000):
        cfg = load_config(write_hub(d / f"fw{n}", peer_keys(n), firewall_on=True))
        batch = ruleset.render_ruleset(cfg)
        counts[n] = ruleset.count_rules(batch)
        times[n] = [timed(lambda: nft.apply_batch(batch))[0] for _ in range(max(repeat, 5))]
    nft.remove_table()
    med = sorted(times[1000])[len(times[1000]) // 2]
    figs.append(Figure("firewall apply, 1000 spokes", "s", times[1000], "same with 10 spokes", times[10],
                       "rules equal; ≤ 50 ms", counts[10] == counts[1000] and med <= 0.05,
                       f"rules: {counts[10]} at 10 spokes, {counts[1000]} at 1000"))
    return figs


def main() -> int:
    opts = json.loads(sys.argv[1])
    if opts.get("stacks_every"):  # (where a slow or stuck run is, every N seconds, on stderr)
        import faulthandler

        faulthandler.dump_traceback_later(float(opts["stacks_every"]), repeat=True)
    figs = run(opts)
    print(json.dumps([f.to_json() for f in figs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
