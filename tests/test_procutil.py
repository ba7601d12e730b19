"""Processes: a tool dies with dvpnd (setpriv's parent-death signal), and a function run as
another user gets that user's view of the file system."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from dvpnd.util.procutil import with_pdeathsig


def test_pdeathsig_goes_into_the_setpriv_that_changes_the_user() -> None:
    assert with_pdeathsig(["pg_basebackup", "-D", "x"]) == ["setpriv", "--pdeathsig", "KILL", "--", "pg_basebackup", "-D", "x"]
    assert with_pdeathsig(["setpriv", "--reuid=101", "--", "tar"]) == ["setpriv", "--pdeathsig", "KILL", "--reuid=101", "--", "tar"]


@pytest.mark.process
@pytest.mark.parametrize("argv", [["sleep", "30"], ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "sleep", "30"]])
def test_a_tool_dies_with_its_parent(argv: list[str]) -> None:
    if argv[0] == "setpriv" and os.geteuid() != 0:
        pytest.skip("changing the user needs root")
    r, w = os.pipe()
    parent = os.fork()
    if parent == 0:  # plays dvpnd: starts the tool, then is killed
        os.close(r)
        p = subprocess.Popen(with_pdeathsig(argv), start_new_session=True)
        os.write(w, str(p.pid).encode())
        time.sleep(30)
        os._exit(0)
    os.close(w)
    tool = int(os.read(r, 64))
    os.close(r)
    time.sleep(0.3)
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{tool}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    os.kill(tool, signal.SIGKILL)
    raise AssertionError("the tool outlived its parent")


def test_wait_for_takes_any_false_value_for_not_yet() -> None:
    """Regression: a lab test's psql printed nothing while the server was starting, and the
    shared helper took that empty output for the answer."""
    import itertools

    from dvpnd.lab.node import wait_for

    answers = itertools.chain(["", 0, [], None, False], itertools.repeat("1"))
    assert wait_for("an answer", lambda: next(answers), timeout=5, step=0.001) == "1"


@pytest.mark.process
def test_wait_exit_all_signals_every_process_and_kills_one_that_ignores_the_first_signal() -> None:
    from dvpnd.util.procutil import wait_exit_all

    polite = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"])
    procs = [*polite, stubborn]

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    try:
        time.sleep(0.3)  # (the trap set)
        wait_exit_all([p.pid for p in procs], 1, (signal.SIGTERM,))
        assert not any(alive(p.pid) for p in polite) and alive(stubborn.pid)  # (reaped on the way)
        wait_exit_all([p.pid for p in procs], 2, (signal.SIGTERM, signal.SIGKILL))
        assert not alive(stubborn.pid)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
