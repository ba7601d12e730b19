"""Logging to stderr for journald, with a filter that keeps secrets out of every line."""

from __future__ import annotations

import logging
import os
import re
import sys

_PATTERNS = [
    re.compile(r"(?i)(private_key\s*[=:]\s*)\S+"),
    re.compile(r"(?i)(password\s*[=:]\s*)\S+"),
    re.compile(r"(?i)(PrivateKey\s*=\s*)\S+"),
]


class RedactingFilter(logging.Filter):
    """Replaces registered secrets (a private key in base64 and hex) and key=value secrets."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add_secret(self, secret: str) -> None:
        if secret:
            self.secrets.add(secret)

    def add_private_key(self, b64: str) -> None:
        """A WireGuard private key, as base64 and as the hex the UAPI protocol uses."""
        import base64

        self.add_secret(b64)
        self.add_secret(base64.b64decode(b64).hex())

    def redact(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "[REDACTED]")
        for p in _PATTERNS:
            text = p.sub(r"\1[REDACTED]", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = self.redact(msg)
        if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        if clean != msg or record.args:
            record.msg, record.args = clean, None
        return True


REDACTOR = RedactingFilter()


def setup_logging(level: str = "info", stream: object = None) -> None:
    """Log lines as `LEVEL logger: message`; journald adds the time and the unit. Written anywhere
    else (a file, a terminal: systemd sets JOURNAL_STREAM for a unit), each line starts with the
    time, to the millisecond."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(REDACTOR)
    fmt = "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt if "JOURNAL_STREAM" in os.environ else "%(asctime)s " + fmt))
    root = logging.getLogger("dvpnd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def set_level(level: str) -> None:
    logging.getLogger("dvpnd").setLevel(level.upper())
