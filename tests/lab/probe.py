"""Probes run inside lab namespaces (stdlib only).

  probe.py tcp HOST PORT... [--timeout S]     -> {"PORT": "open" | "refused" | "timeout"}
  probe.py listen PORT...                     -> listens (accept and close) until killed
  probe.py hammer HOST PORT --until-file F    -> connects until F exists (at most 300 s):
                                                 {"attempts": N, "successes": M}
  probe.py idle HOST PORT N --seconds S       -> holds N silent connections for S seconds:
                                                 {"opened": N, "closed_by_server": M}
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


def main(argv: list[str]) -> int:
    cmd = argv[0]
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
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
