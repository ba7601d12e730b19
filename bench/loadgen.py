"""Fixed-rate HTTP GET load (stdlib asyncio), run inside a namespace.

  python -m bench.loadgen HOST PORT PATH RATE SECONDS [CONNECTIONS]

Open loop: requests are issued on a fixed schedule whatever the server does, so a slow server
cannot hide behind fewer requests. Latency counts from the moment the generator issues a request
(a request waiting for a free connection waits on the clock), not from its due time: asyncio's
timers (1 ms resolution) issue it up to a millisecond late, a lag of the generator's own,
reported apart. Connections are kept alive until the server answers `Connection: close` (dvpnd's
page does after 100 requests on one), as a browser or curl would; the reconnect then counts in
the next request's latency. Prints {"sent", "errors", "p50", "p99", "max", "achieved_rps",
"issue_lag_p50", "p50_with_lag"}.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time


async def worker(host: str, port: int, path: str, queue: asyncio.Queue[float | None],
                 lat: list[float], errors: list[int]) -> None:
    reader = writer = None
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    while True:
        issued = await queue.get()
        if issued is None:
            break
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length, last = 0, False
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                    last = True
            await reader.readexactly(length)
            lat.append(time.perf_counter() - issued)
            if last:  # (the server ends the connection after this answer: the next request opens one)
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            errors.append(1)
            writer = None
    if writer is not None:
        writer.close()


async def main_async(host: str, port: int, path: str, rate: float, seconds: float, conns: int) -> dict[str, float]:
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    lat: list[float] = []
    errors: list[int] = []
    lag: list[float] = []
    tasks = [asyncio.create_task(worker(host, port, path, queue, lat, errors)) for _ in range(conns)]
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        issued = time.perf_counter()
        lag.append(issued - due)
        queue.put_nowait(issued)
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 30)
    s = sorted(lat)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")

    return {"sent": n, "errors": len(errors), "p50": pct(50), "p99": pct(99), "max": s[-1] if s else float("nan"),
            "achieved_rps": len(s) / (time.perf_counter() - start), "issue_lag_p50": statistics.median(lag or [0.0]),
            # (an estimate: each request's own lag is not paired with its latency)
            "p50_with_lag": pct(50) + statistics.median(lag or [0.0])}


def main() -> int:
    host, port, path, rate, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
    conns = int(sys.argv[6]) if len(sys.argv) > 6 else 32
    print(json.dumps(asyncio.run(main_async(host, port, path, rate, seconds, conns))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
