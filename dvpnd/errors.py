"""Error types and the exit codes they map to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
# dvpnd's own exit code for "the configuration cannot be used"; the unit file names it in
# RestartPreventExitStatus= so that systemd does not restart into the same error.
EXIT_CONFIG = 78


class DvpnError(Exception):
    """A foreseeable problem, reported to the user as one message without a traceback."""


class ConfigError(DvpnError):
    """The configuration is invalid. `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class BackendError(DvpnError):
    """WireGuard could not be read or changed."""


class PgError(DvpnError):
    """A PostgreSQL step failed; the message says which and why."""
