"""dvpn benchmarks: `sudo .venv/bin/python -m bench [--quick]` writes bench/RESULTS.md.

Everything runs in network namespaces this harness creates and removes (its own lab, with
the prefix dvpnb-). Each dvpnd figure stands beside the tool a user would otherwise use,
measured in the same run. Medians and ratios: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("DVPN_LAB_DIR", "/run/dvpn-bench-lab")
os.environ.setdefault("DVPN_LAB_PREFIX", "dvpnb-")

from bench import chart, confidential, dataplane, dns, hubs, pgbackup, results, tcp
from bench.stats import Figure
from dvpnd.lab import cluster as lab
from dvpnd.util.procutil import wait_exit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def scratch_node(name: str) -> lab.Node:
    d = lab.LAB_DIR / name
    return lab.Node(name, "scratch", lab.PREFIX + name, "", None, None, None, None, str(d))


def with_scratch(name: str) -> lab.Node:
    node = scratch_node(name)
    Path(node.dir, "wireguard").mkdir(parents=True, exist_ok=True)
    lab.WG_RUN.mkdir(exist_ok=True)
    subprocess.run(["ip", "netns", "add", node.netns], check=True)
    subprocess.run(["ip", "-n", node.netns, "link", "set", "lo", "up"], check=True)
    return node


def drop_scratch(node: lab.Node) -> None:
    pid = lab.wg_go_pid(node)
    if pid:  # (stopped first: it does not notice its namespace going for a long while)
        wait_exit(pid, 5, (signal.SIGTERM, signal.SIGKILL))
    subprocess.run(["ip", "netns", "del", node.netns], check=False)


def control_plane(quick: bool) -> list[Figure]:
    node = with_scratch("ctl")
    try:
        opts = {"sizes": [200, 1000] if quick else [1000, 10000], "add_among": 1000 if quick else 5000,
                "repeat": 1 if quick else 3, "dir": node.dir}
        env = dict(lab.node_env(node), PYTHONPATH=str(ROOT))
        r = subprocess.run(lab.node_argv(node, [sys.executable, "-m", "bench.ctl", json.dumps(opts)]),
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"bench.ctl failed: {r.stderr[-2000:]}")
        return [Figure.from_json(f) for f in json.loads(r.stdout.strip().splitlines()[-1])]
    finally:
        drop_scratch(node)


def kernel_rows(quick: bool) -> list[Figure]:
    """The control-plane rows on the kernel's WireGuard module: bench.ctl inside a Debian 12 VM
    (packaging/vmbench, the VM test's image; the .deb built from this checkout first). TCG here
    (no working KVM): times are not comparable to the rows measured on the machine, the ratios
    to `wg` in the same VM are. Not in --quick (the boot alone takes minutes)."""
    if quick:
        print("kernel: not in --quick (a VM boot)", flush=True)
        return []
    # (the sizes; in TCG the 10,000-peer config alone loads in 20 s, a cold apply 12 s)
    opts = {"sizes": [1000, 10000], "add_among": 5000, "repeat": 3, "stacks_every": 300}
    subprocess.run([str(ROOT / "dev"), "deb"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    out = lab.LAB_DIR / "kernel-figures.json"
    lab.LAB_DIR.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([str(ROOT / "packaging" / "vmbench"), json.dumps(opts), str(out)], check=True, cwd=ROOT)
        figs = [Figure.from_json(f) for f in json.loads(out.read_text())]
    finally:
        out.unlink(missing_ok=True)
    accel = os.environ.get("DVPN_VM_ACCEL", "tcg")
    for f in figs:
        f.note = "; ".join(x for x in (f.note, f"VM, {accel.upper()}: compare ratios, not times") if x)
    return figs


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(f[11]) + int(f[12])


DEBIAN_PYTHON = "/usr/bin/python3"
RUNTIME_MODULES = ("aiohttp.web", "yaml", "nftables", "cryptography", "prometheus_client", "sdnotify", "dnslib")


def debian_python() -> str | None:
    """Debian's python3 when it has every runtime dependency from Debian's packages (what the
    .deb and the container image run dvpnd on), else None."""
    code = "import " + ", ".join(RUNTIME_MODULES)
    ok = os.path.exists(DEBIAN_PYTHON) and subprocess.run(
        [DEBIAN_PYTHON, "-I", "-c", code], capture_output=True).returncode == 0
    return DEBIAN_PYTHON if ok else None


def daemon_figures(quick: bool) -> list[Figure]:
    """A real dvpnd hub with N peers: its memory, /metrics time, idle CPU. dvpnd runs on Debian's
    python3 and packages where they are installed (what the .deb runs), and once more, with 3
    peers, on this interpreter's (.venv: PyPI's wheels, heavier) for reference."""
    from bench.ctl import peer_keys, write_hub

    figs: list[Figure] = []
    deb = debian_python()
    where = "Debian's packages" if deb else "the .venv's packages"
    runs: list[tuple[int, str | None]] = [(3, deb), (1000, deb)] + ([] if quick else [(10000, deb)])
    if deb:
        runs.insert(1, (3, None))
    goals = {3: 45, 1000: 70, 10000: 120}
    for n, python in runs:
        reference = deb is not None and python is None
        node = with_scratch(f"d{n}{'v' if reference else ''}")
        try:
            cfg_path = write_hub(Path(node.dir), peer_keys(n), firewall_on=True)
            cfg = json.loads(json.dumps(__import__("yaml").safe_load(cfg_path.read_text())))
            cfg["metrics"] = {"enabled": True, "listen": "127.0.0.1", "port": 9586}
            cfg_path.write_text(__import__("yaml").safe_dump(cfg))
            node.config = str(cfg_path)
            node.role = "hub"
            pid = lab.start_daemon(node, {"PYTHONPATH": str(ROOT)}, python=python)
            lab.wait_ready(node, timeout=300)
            time.sleep(2)
            rss = rss_kib(pid) / 1024
            if reference:
                figs.append(Figure(f"dvpnd RSS, {n} peers, on the .venv's packages (PyPI)", "MiB", [rss],
                                   goal=f"≤ {goals[n]} MiB", met=rss <= goals[n],
                                   note="for reference: PyPI's aiohttp and cryptography weigh more than Debian's"))
                lab.stop_daemon(node)
                continue
            figs.append(Figure(f"dvpnd RSS, {n} peers", "MiB", [rss], goal=f"≤ {goals[n]} MiB",
                               met=rss <= goals[n], note=f"dvpnd on {where}"))
            if n == 1000:
                code = ("import time,urllib.request as u;t=[];"
                        "[(s:=time.perf_counter(),u.urlopen('http://127.0.0.1:9586/metrics').read(),"
                        "t.append(time.perf_counter()-s)) for _ in range(20)];print(t)")
                out = lab.run_in(node, [sys.executable, "-c", code]).stdout
                times = json.loads(out.strip())
                med = sorted(times)[len(times) // 2]
                figs.append(Figure("/metrics at 1000 peers", "s", times, goal="≤ 50 ms", met=med <= 0.05,
                                   note=f"dvpnd on {where}"))
                secs = 10 if quick else 60
                t0 = cpu_ticks(pid)
                time.sleep(secs)
                pct = (cpu_ticks(pid) - t0) / os.sysconf("SC_CLK_TCK") / secs * 100
                figs.append(Figure(f"dvpnd idle CPU over {secs} s, 1000 peers", "% of a core", [pct],
                                   goal="≤ 0.3 %", met=pct <= 0.3, note=f"dvpnd on {where}"))
            lab.stop_daemon(node)
        finally:
            drop_scratch(node)
    return figs


def machine() -> str:
    cores = os.cpu_count()
    return f"{cores} cores, kernel {platform.release()}, {platform.python_implementation()} {platform.python_version()}"


def write_results(figs: list[Figure], quick: bool, started: float, only: list[str] | None = None,
                  failed: list[str] | None = None) -> Path:
    out = HERE / ("RESULTS-quick.md" if quick else "RESULTS.md")
    out_json = HERE / (out.stem + ".json")
    now = datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')
    took = time.monotonic() - started
    old = out.read_text() if out.exists() else ""
    head, old_rows, analysis = results.split_results(old)
    if only and old_rows:
        # one section re-measured: its rows replaced in place, every other row kept
        at = next((i for i, ln in enumerate(head) if ln.startswith("- ")), len(head))
        while at < len(head) and head[at] != "":  # (to the end of the list: an item may take lines)
            at += 1
        cmd = "sudo .venv/bin/python -m bench" + (" --quick" if quick else "") + "".join(
            f" --only {o}" for o in only if not failed)
        what = (f"every section but {', '.join(failed)} re-measured ({', '.join(failed)} failed: "
                "its rows as before)" if failed else "its rows replaced in place, the others as above")
        head = head[:at] + [f"- `{cmd}` on {now} ({took:.0f} s, {machine()}): {what}"] + head[at:]
        lines = [*head, "", *results.TABLE_HEAD, *results.merge_rows(old_rows, figs)]
        data = results.merge_json(results.read_json(out_json.read_text() if out_json.exists() else ""), figs)
    else:
        lines = [
            "# dvpn benchmark results",
            "",
            f"- date: {now}",
            f"- machine: {machine()}",
            "- backend: userspace (wireguard-go; this kernel has no WireGuard module)",
            f"- mode: {'quick (tiny sizes, single runs)' if quick else 'full'}; took {took:.0f} s",
            "- command: `sudo .venv/bin/python -m bench" + (" --quick`" if quick else "`"),
            "",
            "Values are min / median / max over the runs; the anchor is the tool a user would otherwise",
            "use, measured in the same run; ratio = dvpnd median / anchor median.",
            "",
            *results.TABLE_HEAD,
            *(f.row() for f in figs),
        ]
        data = [f.to_json() for f in figs]
    # The written analysis below the table (from "## " on) is kept from the last full run.
    text = "\n".join(lines) + "\n" + analysis
    out.write_text(text)
    out_json.write_text(json.dumps(data, indent=1))
    try:
        png = chart.render_chart(text, out.with_suffix(".png"))
        print(f"wrote {png}")
    except ImportError:
        print("matplotlib is not installed: no chart (it is in the bench extra: pip install -e '.[bench]')")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a minute or two")
    ap.add_argument("--only", choices=("control", "kernel", "daemon", "data", "confidential", "hubs", "tcp", "dns",
                                       "backup"),
                    action="append")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("the benchmarks need root (network namespaces, nftables, wireguard-go)", file=sys.stderr)
        return 2
    started = time.monotonic()
    figs: list[Figure] = []
    done: list[str] = []
    failed: list[str] = []
    lab.down()
    try:
        dataplane.REUSE = args.quick
        # (in this order the sections that share a lab's shape follow each other: --quick reuses it)
        for name, fn in (("control", control_plane), ("kernel", kernel_rows), ("daemon", daemon_figures),
                         ("data", dataplane.run), ("confidential", confidential.run), ("tcp", tcp.run),
                         ("hubs", hubs.run), ("dns", dns.run), ("backup", pgbackup.run)):
            if args.only and name not in args.only:
                continue
            print(f"== {name}", flush=True)
            t0 = time.monotonic()
            try:
                got = fn(args.quick)
            except Exception:  # noqa: BLE001  (one section failing costs its rows, not the run's)
                traceback.print_exc()
                print(f"== {name}: FAILED after {time.monotonic() - t0:.0f} s", flush=True)
                failed.append(name)
                lab.down()
                continue
            for f in got:
                print(f.row(), flush=True)
            print(f"== {name}: {time.monotonic() - t0:.0f} s", flush=True)
            figs += got
            done.append(name)
    finally:
        lab.down()
    if failed and not done:
        print(f"every section failed: {', '.join(failed)}; nothing written", file=sys.stderr)
        return 1
    out = write_results(figs, args.quick, started, done if failed else args.only, failed)
    print(f"wrote {out}" + (f"; FAILED: {', '.join(failed)} (their rows as before)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
