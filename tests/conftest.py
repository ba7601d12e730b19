"""The unit tier's rule, as a fixture: a unit test starts no process (no subprocess, no fork)
unless it is marked `process` (it runs dvpnctl or dvpnd as a user would, or a tool whose
behaviour is the point). The lab's tests (tests/lab) start processes by nature."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import pytest

# Libraries that start a process the first time they are imported or asked (psycopg finds libpq
# with ldconfig; Debian's pyroute2 0.7.2 asks platform for the processor, which runs uname -p):
# done once here, before any test, so the rule below judges the code under test only.
platform.uname().processor  # noqa: B018 - cached on the shared uname result
for _module in ("psycopg.pq", "pyroute2"):  # pyroute2 0.7.2 also runs `file -b` (platform.architecture)
    try:
        __import__(_module)
    except ImportError:
        pass


class StartedAProcess(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_processes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "tests/lab/" in str(request.node.path) or request.node.get_closest_marker("process"):
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise StartedAProcess(f"{request.node.nodeid} starts a process ({args[:1]!r}); "
                              "a unit test may not, unless it is marked @pytest.mark.process")

    class NoPopen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            refuse(*args)

    monkeypatch.setattr(subprocess, "Popen", NoPopen)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)
