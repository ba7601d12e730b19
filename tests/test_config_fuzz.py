"""The config loader against hostile and careless input: a slice of tests/fuzz_config.py (the
full run is `./dev fuzz`), and the cases the fuzzer found, each with the line it must print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvpnd.config.load import load_config
from dvpnd.errors import ConfigError

from .fuzz_config import BOMB
from .test_config import HUB, write

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.process
def test_a_slice_of_the_fuzzer_ends_in_no_traceback_hang_or_blow_up() -> None:
    # its own process: the fuzzer caps its address space
    r = subprocess.run([sys.executable, "-m", "tests.fuzz_config", "--cases", "400", "--seed", "3"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    result = json.loads(r.stdout.splitlines()[0])
    assert r.returncode == 0, r.stdout + r.stderr
    assert result["cases"] >= 400 and set(result["counts"]) <= {"ok", "config-error"}


@pytest.mark.parametrize("text, message", [
    ("role: hub\nname: hub\nx: !!int 'zz'\n", ":3: x: tag 'tag:yaml.org,2002:int' is not allowed here"),
    ("role: hub\nname: !!bool 'maybe'\n", ":2: name: tag 'tag:yaml.org,2002:bool' is not allowed here"),
    ("role: hub\nname: !custom 3\n", ":2: name: tag '!custom' is not allowed here"),
    ("<<: {role: hub}\nname: hub\n", ":1: (top level): merge keys (<<) are not supported"),
    ("role: hub\nname: hub\nwireguard:\n  mtu: 2023-13-45\n", ":4: wireguard.mtu: must be an integer, got a string"),
    ("role: hub\nname: hub\nwireguard:\n  mtu: " + "9" * 5000 + "\n", ":4: wireguard.mtu: 999999999999999999999999...: integer out of range"),
    ("role: hub\nname: hub\nx: " + "[" * 40 + "]" * 40 + "\n", "nested too deeply (at most 32 levels"),
    ("role: hub\nname: hub\nx: " + "[" * 1200 + "]" * 1200 + "\n", "nested too deeply"),
    ("a: &x\n  b: *x\n", "nested too deeply (at most 32 levels; a recursive alias?)"),
    (BOMB, "more than 100000 values (aliases expanding without end?)"),
])
def test_what_the_fuzzer_found_is_one_line_naming_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    f = write(tmp_path, text)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert time.monotonic() - t0 < 5
    assert any(p.startswith(str(f)) and message in p for p in e.value.problems), e.value.problems


def test_special_files_are_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "dvpnd.yaml"
    os.mkfifo(fifo)
    for path, message in ((fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                          (tmp_path, "not a regular file")):
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    big = write(tmp_path, HUB + "#" * (1 << 20), name="big.yaml")
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        load_config(big)


def test_a_fifo_in_peers_d_is_refused_not_waited_on(tmp_path: Path) -> None:
    f = write(tmp_path, HUB)
    (tmp_path / "peers.d").mkdir()
    os.mkfifo(tmp_path / "peers.d" / "x.yaml")
    with pytest.raises(ConfigError, match=r"peers.d/x.yaml: not a regular file"):
        load_config(f)


@pytest.mark.process
@pytest.mark.parametrize("text", [BOMB, "x: !!int 'zz'\n", "a: &x\n  b: *x\n"])
def test_dvpnd_check_exits_78_so_systemd_does_not_loop(tmp_path: Path, text: str) -> None:
    f = write(tmp_path, text)
    r = subprocess.run([sys.executable, "-m", "dvpnd.daemon", "--check", "--config", str(f)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 78 and "Traceback" not in r.stderr and str(f) in r.stderr, r.stderr
