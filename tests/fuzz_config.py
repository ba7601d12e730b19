"""A fuzzer for the configuration loader: what a careless operator (or a hostile file) can give it.

Each case is a YAML text made from the example configs by a deterministic generator: values
replaced by nasty scalars (explicit tags, invalid dates, huge integers, alias bombs, merge keys,
deep nesting, recursive aliases, odd types), lines cut, duplicated or garbled, bytes flipped.
A case passes when load_config returns a Config or raises ConfigError; it fails on any other
exception (a traceback), on taking longer than CASE_SECONDS (a hang), or on the process going
over its memory cap (a blow-up). Special files (a FIFO, /dev/zero, a directory) are tried too.

    python -m tests.fuzz_config [--cases N] [--seed S]      the full run (./dev fuzz)

tests/test_config_fuzz.py runs a slice of it in the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASE_SECONDS = 5.0
MEMORY_CAP = 1 << 30  # the fuzzing process's address space, whatever a case asks for

NASTY = [
    "!!int 'zz'", "!!bool 'maybe'", "!!float 'x'", "!!timestamp 'yesterday'", "!!binary '%%%'",
    "!!python/object:os.system 'true'", "!!set {a, b}", "!!omap [a: 1]", "!custom 3", "! plain",
    "2023-13-45", "2023-02-30 25:61:61", "2001-12-14t21:59:43.10-05:00",
    "1" * 5000, "-" + "9" * 4400, "0x" + "f" * 5000, "0o" + "7" * 6000, "1e99999", ".nan", "-.inf",
    "~", "null", "", "''", "yes", "no", "on", "off", "Y", "=", "<<: {a: 1}",
    "[" * 1200 + "]" * 1200, "{a: " * 600 + "1" + "}" * 600, "&a [*a]",
    "\x00", "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"), "é" * 100, "a" * 100_000,
    "[1, 2, 3]", "{x: y}", "[[[]]]", "-1", "65536", "99999999999999999999", "3.5", "true",
    "'0.0.0.0/0'", "127.0.0.0/8", "224.0.0.0/4", "10.88.0.0/33", "'evil\\n'", "../../etc", "/dev/zero",
    "gzip:99", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "'1h'", "-5m", "7x",
]
BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""
WHOLE = [
    BOMB, BOMB.replace("a: &a", "role: hub\nname: hub\na: &a"), "&x {a: *x}", "- &x [*x]", "a: &x\n  b: *x\n",
    "<<: {role: hub}\nname: hub\n", "role: hub\n<<: [{name: hub}]\n", "!!map {role: hub}", "--- 1\n--- 2\n",
    "role: hub\nname: hub\n" + "  " * 3 + "\t- x", "%YAML 1.1\n%TAG ! tag:evil:\n--- !x 3\n", "\ufeffrole: hub\n",
    "role: [hub]\n", "? [a, b]\n: c\n", "{[1, 2]: x}", "role: hub\nname: hub\n" * 2,
]


def seeds() -> list[str]:
    return [p.read_text() for p in sorted((ROOT / "etc").glob("*.yaml"))]


def mutate(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    kind = rng.randrange(6)
    if kind == 0 and lines:  # a value replaced by a nasty scalar
        i = rng.randrange(len(lines))
        head, sep, _ = lines[i].partition(":")
        if sep:
            lines[i] = f"{head}: {rng.choice(NASTY)}"
    elif kind == 1 and lines:  # a key added with a nasty value, at some depth
        i = rng.randrange(len(lines))
        indent = len(lines[i]) - len(lines[i].lstrip())
        key = rng.choice(["name", "role", "port", "listen", "interval", "public_key", "address", "x", "<<", "? a"])
        lines.insert(i, " " * indent + f"{key}: {rng.choice(NASTY)}")
    elif kind == 2 and lines:  # lines dropped, duplicated or swapped
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        op = rng.randrange(3)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
    elif kind == 3:  # bytes flipped
        b = bytearray(text.encode())
        for _ in range(rng.randrange(1, 8)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return b.decode("utf-8", "replace")
    elif kind == 4:  # cut short
        return text[: rng.randrange(len(text) + 1)]
    else:  # a whole nasty document, or one glued onto a config
        doc = rng.choice(WHOLE)
        return doc if rng.random() < 0.5 else text + "\n" + doc
    return "\n".join(lines) + "\n"


def cases(n: int, seed: int) -> Iterator[tuple[str, str]]:
    rng = random.Random(seed)
    base = seeds()
    for doc in WHOLE:
        yield "whole", doc
    for value in NASTY:
        yield "value", base[0] + f"\nname: {value}\n"
    i = 0
    while i < n - len(WHOLE) - len(NASTY):
        text = rng.choice(base)
        for _ in range(rng.randrange(1, 4)):
            text = mutate(rng, text)
        yield "mutated", text
        i += 1


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang()


def run_case(path: Path) -> str:
    """'ok', 'config-error', or what went wrong."""
    from dvpnd.config.load import load_config
    from dvpnd.errors import ConfigError

    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        load_config(path)
        return "ok"
    except ConfigError as e:
        bad = [p for p in e.problems if not p.startswith(str(path.parent))]
        return "config-error" if not bad else f"unplaced message: {bad[0][:200]}"
    except Hang:
        return "hang"
    except MemoryError:
        return "memory"
    except RecursionError:
        return "traceback: RecursionError"
    except Exception as e:  # noqa: BLE001 - this is what the fuzzer counts
        return "traceback: " + "".join(traceback.format_exception_only(type(e), e)).strip()[:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def special_files(d: Path) -> Iterator[tuple[str, Path]]:
    fifo = d / "fifo.yaml"
    os.mkfifo(fifo)
    yield "fifo", fifo
    yield "dev-zero", Path("/dev/zero")
    yield "directory", d
    big = d / "big.yaml"
    big.write_text("role: hub\nname: hub\n" + "# padding\n" * 300_000)
    yield "3 MB file", big
    peers = d / "hub" / "peers.d"
    peers.mkdir(parents=True)
    (d / "hub" / "dvpnd.yaml").write_text(seeds()[0])
    os.mkfifo(peers / "x.yaml")
    yield "fifo in peers.d", d / "hub" / "dvpnd.yaml"


def fuzz(n: int, seed: int, verbose: bool = False) -> dict[str, object]:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    counts: dict[str, int] = {}
    failures: list[dict[str, str]] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dvpn-fuzz-") as tmp:
        d = Path(tmp)
        f = d / "dvpnd.yaml"
        items: list[tuple[str, Path, str]] = []
        for kind, text in cases(n, seed):
            items.append((kind, f, text))
        for i, (kind, path, text) in enumerate(items):
            path.write_text(text, encoding="utf-8", errors="surrogateescape")
            outcome = run_case(path)
            key = outcome if outcome in ("ok", "config-error") else outcome.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
            if key not in ("ok", "config-error"):
                failures.append({"case": str(i), "kind": kind, "outcome": outcome, "text": text[:300]})
                if verbose:
                    print(f"case {i} ({kind}): {outcome}", file=sys.stderr)
        for name, path in special_files(d):
            outcome = run_case(path)
            key = outcome if outcome in ("ok", "config-error") else outcome.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
            if key not in ("ok", "config-error"):
                failures.append({"case": name, "kind": "special", "outcome": outcome, "text": str(path)})
    return {"cases": sum(counts.values()), "counts": counts, "failures": failures,
            "seconds": round(time.monotonic() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    result = fuzz(a.cases, a.seed, a.verbose)
    failures = result.pop("failures")
    print(json.dumps(result))
    for f in failures[:20]:  # type: ignore[index]
        print(json.dumps(f))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
