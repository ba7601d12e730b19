"""Profile an idle dvpnd hub with N peers: its CPU over a window, then py-spy over another.

  sudo .venv/bin/python -m bench.profile --peers 1000 --seconds 60

The hub runs in a scratch network namespace of its own (like the bench's daemon rows), with its
firewall and metrics on. py-spy (the dev extra) samples it without stopping it; the functions are
listed by the share of samples they appear in (inclusive), then by their own time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.__main__ import cpu_ticks, drop_scratch, rss_kib, with_scratch
from bench.ctl import peer_keys, write_hub
from dvpnd.lab import cluster as lab


def fold(raw: str, top: int) -> list[str]:
    """py-spy's raw (collapsed) stacks: the functions by inclusive share, then by own share."""
    incl: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.rpartition("(")[2].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for f in stack.split(";")]
        for f in set(frames):
            incl[f] += n
        own[frames[-1]] += n
    out = [f"{total} samples"]
    out += [f"{100 * n / max(total, 1):5.1f} %  {f}" for f, n in incl.most_common(top)]
    out += ["own time:"] + [f"{100 * n / max(total, 1):5.1f} %  {f}" for f, n in own.most_common(top // 2)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    spy = Path(sys.executable).parent / "py-spy"
    node = with_scratch(f"prof{args.peers}")
    try:
        cfg_path = write_hub(Path(node.dir), peer_keys(args.peers), firewall_on=True)
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["metrics"] = {"enabled": True, "listen": "127.0.0.1", "port": 9586}
        cfg_path.write_text(yaml.safe_dump(cfg))
        node.config, node.role = str(cfg_path), "hub"
        pid = lab.start_daemon(node)
        lab.wait_ready(node, timeout=300)
        time.sleep(3)
        t0 = cpu_ticks(pid)
        time.sleep(args.seconds)
        pct = (cpu_ticks(pid) - t0) / os.sysconf("SC_CLK_TCK") / args.seconds * 100
        print(f"dvpnd, {args.peers} peers: RSS {rss_kib(pid) / 1024:.1f} MiB; "
              f"idle CPU over {args.seconds} s {pct:.2f} % of a core", flush=True)
        if spy.exists():
            with tempfile.NamedTemporaryFile("r", suffix=".txt") as raw:
                subprocess.run([str(spy), "record", "-p", str(pid), "-d", str(args.seconds), "-r", "1000",
                                "-f", "raw", "-o", raw.name, "--nonblocking"], check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                print("\n".join(fold(raw.read(), args.top)))
        else:
            print(f"{spy} is not installed (the dev extra): no profile")
        lab.stop_daemon(node)
    finally:
        drop_scratch(node)
        shutil.rmtree(node.dir, ignore_errors=True)  # (its keys, config and state: nothing stays)
        with contextlib.suppress(OSError):
            lab.LAB_DIR.rmdir()  # (only if nothing else is in it)
    return 0


if __name__ == "__main__":
    sys.exit(main())
