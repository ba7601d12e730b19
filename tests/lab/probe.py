"""Probes run inside lab namespaces (stdlib only, but for `relay`, which speaks WebSocket with
aiohttp, a dependency of dvpnd itself).

  probe.py tcp HOST PORT... [--timeout S]     -> {"PORT": "open" | "refused" | "timeout"}
  probe.py listen PORT...                     -> listens (accept and close) until killed
  probe.py catch PORT SECONDS                 -> "ready", then {"tcp": TEXT, "udp": TEXT} received
  probe.py send HOST PORT TEXT                -> TEXT once over TCP, once over UDP
  probe.py hammer HOST PORT --until-file F    -> connects until F exists (at most 300 s):
                                                 {"attempts": N, "successes": M}
  probe.py idle HOST PORT N --seconds S       -> holds N silent connections for S seconds:
                                                 {"opened": N, "closed_by_server": M}
  probe.py flood HOST PORT --pipeline BYTES --half N --seconds S
                                              -> one connection pipelines BYTES of GET /healthz
                                                 reading nothing, N others each send up to 1 MB
                                                 of a header block that never ends; for at most S
                                                 seconds: {"pipelined": B, "half_sent": B2,
                                                 "closed_by_server": M, "refused": R}
  probe.py echo PORT SECONDS                  -> "ready", then echoes one TCP connection back
  probe.py stream HOST PORT SECONDS           -> "connected", then one TCP connection, 1 KB every
                                                 10 ms, each read back: {"sent": B, "echoed": B, "error": E,
                                                 "longest_wait": S}
  probe.py relay HOST PORT                    -> what the hub's relay answers an Internet client:
                                                 {"plain": HTTP status, "other_path": status,
                                                 "no_proof_close": code, "bad_proof_close": code}
  probe.py upstream ADDRESS SECONDS           -> "ready", then for SECONDS a tiny DNS upstream on
                                                 ADDRESS:53 (UDP): www.example.org A 198.51.100.80,
                                                 NXDOMAIN for the rest (dnslib); then {"queries": N}
  probe.py dnsjunk HOST N                     -> N malformed and truncated datagrams to HOST:53
                                                 (bounded: at most 5000), then {"sent": N}
  probe.py dnsflood HOST N ZONE               -> N queries (at most 20000) for names in ZONE and
                                                 outside it, sent without waiting, then the
                                                 replies for 5 s: {"sent": N, "replies": M}
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time


def tcp(host: str, port: int, timeout: float) -> str:
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except (TimeoutError, OSError):
        return "timeout"
    finally:
        s.close()


def flood(argv: list[str]) -> int:
    """A sustained flood: a connection the server closes is opened again, until the time is up."""
    import resource

    host, port = argv[1], int(argv[2])
    want = int(argv[argv.index("--pipeline") + 1])
    n = int(argv[argv.index("--half") + 1])
    end = time.monotonic() + float(argv[argv.index("--seconds") + 1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, max(n + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
    pipeline = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 400
    half_start = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    half_pad = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    sel = selectors.DefaultSelector()
    left: dict[socket.socket, int] = {}  # bytes each connection still has to send
    sent = {"pipelined": 0, "half_sent": 0}
    count = {"connections": 0, "refused": 0, "closed_by_server": 0}

    def connect(what: str, budget: int) -> None:
        try:
            s = socket.create_connection((host, port), timeout=2)
        except OSError:
            count["refused"] += 1
            return
        count["connections"] += 1
        if what == "pipelined":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it reads nothing
        s.setblocking(False)
        left[s] = budget
        sel.register(s, selectors.EVENT_WRITE, what)

    connect("pipelined", want)
    for _ in range(n):
        connect("half_sent", 1 << 20)
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj  # type: ignore[assignment]
            what = key.data
            if what == "done":
                sel.unregister(s)
                left.pop(s)
                s.close()
                continue
            if what == "pipelined":
                chunk = pipeline
            else:
                chunk = half_start if left[s] == 1 << 20 else half_pad
            try:
                k = s.send(chunk[: left[s]])
            except BlockingIOError:
                continue
            except OSError:
                count["closed_by_server"] += 1
                sel.unregister(s)
                budget = left.pop(s)
                s.close()
                if time.monotonic() < end and (what != "pipelined" or budget > 0):
                    connect(what, budget if what == "pipelined" else 1 << 20)
                continue
            left[s] -= k
            sent[what] += k
            if left[s] <= 0:
                sel.modify(s, selectors.EVENT_READ, "done")  # all sent: wait for the close
                if what == "pipelined":
                    break
        if sent["pipelined"] >= want:
            break
    print(json.dumps({**sent, **count, "open_at_end": len(left)}), flush=True)
    for s in list(left):
        s.close()
    return 0


def catch(port: int, seconds: float) -> int:
    """Receive one TCP stream and one UDP datagram on `port`; print what arrived."""
    t = socket.socket()
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port))
    t.listen(4)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", port))
    sel = selectors.DefaultSelector()
    sel.register(t, selectors.EVENT_READ)
    sel.register(u, selectors.EVENT_READ)
    got: dict[str, str] = {}
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while len(got) < 2 and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            if key.fileobj is u:
                got["udp"] = u.recv(2048).decode(errors="replace")
            else:
                conn, _ = t.accept()
                conn.settimeout(2)
                data = b""
                try:
                    while chunk := conn.recv(4096):
                        data += chunk
                except OSError:
                    pass
                conn.close()
                got["tcp"] = data.decode(errors="replace")
    print(json.dumps(got), flush=True)
    return 0


def send(host: str, port: int, text: str) -> int:
    """Send `text` once over TCP and once over UDP; print what happened to each."""
    out: dict[str, str] = {}
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(text.encode())
        out["tcp"] = "sent"
    except OSError as e:
        out["tcp"] = f"error: {e}"
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(text.encode(), (host, port))
        out["udp"] = "sent"
    except OSError as e:
        out["udp"] = f"error: {e}"
    print(json.dumps(out))
    return 0


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "catch":
        return catch(int(argv[1]), float(argv[2]))
    if cmd == "send":
        return send(argv[1], int(argv[2]), argv[3])
    if cmd == "tcp":
        timeout = 1.0
        if "--timeout" in argv:
            i = argv.index("--timeout")
            timeout = float(argv[i + 1])
            argv = argv[:i] + argv[i + 2:]
        host, ports = argv[1], [int(p) for p in argv[2:]]
        print(json.dumps({str(p): tcp(host, p, timeout) for p in ports}))
        return 0
    if cmd == "listen":
        sel = selectors.DefaultSelector()
        for p in argv[1:]:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", int(p)))
            s.listen(64)
            sel.register(s, selectors.EVENT_READ)
        print("ready", flush=True)
        deadline = time.monotonic() + 600  # never outlive a test run by much
        while time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                conn.close()
        return 0
    if cmd == "hammer":
        import os

        host, port = argv[1], int(argv[2])
        stop = argv[argv.index("--until-file") + 1]
        attempts = successes = 0
        end = time.monotonic() + 300  # bounded whatever happens to the caller
        while time.monotonic() < end and not os.path.exists(stop):
            attempts += 1
            if tcp(host, port, 0.2) == "open":
                successes += 1
        print(json.dumps({"attempts": attempts, "successes": successes}))
        return 0
    if cmd == "idle":
        import resource

        host, port, n = argv[1], int(argv[2]), int(argv[3])
        seconds = float(argv[argv.index("--seconds") + 1])
        resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, max(n + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
        conns = []
        for _ in range(n):
            s = socket.create_connection((host, port), timeout=5)
            s.setblocking(False)
            conns.append(s)
        print(json.dumps({"opened": len(conns)}), flush=True)
        time.sleep(seconds)
        closed = 0
        for s in conns:
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
            s.close()
        print(json.dumps({"opened": len(conns), "closed_by_server": closed}), flush=True)
        return 0
    if cmd == "flood":
        return flood(argv)
    if cmd == "echo":
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", int(argv[1])))
        srv.listen(1)
        srv.settimeout(float(argv[2]))
        print("ready", flush=True)
        conn, _ = srv.accept()
        conn.settimeout(float(argv[2]))
        while data := conn.recv(65536):
            conn.sendall(data)
        return 0
    if cmd == "stream":
        host, port, seconds = argv[1], int(argv[2]), float(argv[3])
        c = socket.create_connection((host, port), timeout=15)
        c.settimeout(30)
        print("connected", flush=True)
        sent = echoed = 0
        longest = 0.0
        error = None
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                t0 = time.monotonic()
                c.sendall(b"x" * 1024)
                sent += 1024
                while echoed < sent:
                    echoed += len(c.recv(65536) or b"") or -10**9
                longest = max(longest, time.monotonic() - t0)
                time.sleep(0.01)
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
        c.close()
        print(json.dumps({"sent": sent, "echoed": echoed, "error": error, "longest_wait": round(longest, 3)}))
        return 0
    if cmd == "upstream":
        return upstream(argv[1], float(argv[2]))
    if cmd == "dnsflood":
        return dnsflood(argv[1], int(argv[2]), argv[3])
    if cmd == "dnsjunk":
        return dnsjunk(argv[1], int(argv[2]))
    if cmd == "relay":
        import asyncio

        print(json.dumps(asyncio.run(relay(argv[1], int(argv[2])))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


async def relay(host: str, port: int) -> dict[str, object]:
    import base64
    import ssl

    import aiohttp

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    base = f"https://{host}:{port}"
    out: dict[str, object] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        async with s.get(base + "/dvpn/relay/v1", ssl=ctx) as r:
            out["plain"] = r.status
        async with s.get(base + "/status", ssl=ctx) as r:
            out["other_path"] = r.status
        for name, answer in (("no_proof_close", "{}"),
                             ("bad_proof_close", json.dumps({"key": base64.b64encode(b"k" * 32).decode(),
                                                             "proof": base64.b64encode(b"p" * 32).decode()}))):
            ws = await s.ws_connect(f"wss://{host}:{port}/dvpn/relay/v1", ssl=ctx)
            await ws.receive(timeout=5)
            await ws.send_str(answer)
            await ws.receive(timeout=10)
            out[name] = ws.close_code
            await ws.close()
    return out


def upstream(address: str, seconds: float) -> int:
    from dnslib import QTYPE, RCODE, RR, A, DNSRecord

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 53))
        s.settimeout(0.2)
        print("ready", flush=True)
        n, end = 0, time.monotonic() + min(seconds, 600)
        while time.monotonic() < end:
            try:
                data, addr = s.recvfrom(4096)
            except TimeoutError:
                continue
            try:
                q = DNSRecord.parse(data)
            except Exception:  # noqa: BLE001
                continue
            n += 1
            r = q.reply()
            if str(q.q.qname).lower() == "www.example.org." and q.q.qtype == QTYPE.A:
                r.add_answer(RR(q.q.qname, QTYPE.A, ttl=60, rdata=A("198.51.100.80")))
            else:
                r.header.rcode = RCODE.NXDOMAIN
            s.sendto(r.pack(), addr)
    print(json.dumps({"queries": n}))
    return 0


def dnsjunk(host: str, n: int) -> int:
    import random

    rnd = random.Random(7)
    valid = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x07spoke-b\x04dvpn\x08internal\x00"
             + b"\x00\x01\x00\x01")
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(min(n, 5000)):
            kind = i % 4
            if kind == 0:
                pkt = valid[: rnd.randrange(0, len(valid))]  # truncated anywhere
            elif kind == 1:
                pkt = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 600)))  # noise
            elif kind == 2:  # a label pointer loop
                pkt = bytes.fromhex("123401000001000000000000c00c00010001")
            else:  # counts that lie
                pkt = bytes.fromhex("1234010000ff00ff00ff00ff") + valid[12:]
            s.sendto(pkt, (host, 53))
            sent += 1
            if i % 200 == 0:
                time.sleep(0.01)
    print(json.dumps({"sent": sent}))
    return 0


def dnsflood(host: str, n: int, zone: str) -> int:
    from dnslib import DNSRecord

    n = min(n, 20000)
    replies = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for i in range(n):
            name = f"q{i}.{zone}" if i % 2 else f"q{i}.example.net"
            try:
                s.sendto(DNSRecord.question(name).pack(), (host, 53))
            except BlockingIOError:
                time.sleep(0.001)
            while True:
                try:
                    s.recv(4096)
                    replies += 1
                except BlockingIOError:
                    break
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                s.recv(4096)
                replies += 1
            except BlockingIOError:
                time.sleep(0.01)
    print(json.dumps({"sent": n, "replies": replies}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
