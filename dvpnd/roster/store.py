"""A node's roster state on disk: the last verified document and the highest serial seen.

Both are written durably (temp file, fsync, rename, directory fsync), the serial last: a crash
between the two leaves a roster whose serial is at most the recorded one, never a recorded
serial lower than the roster in force. A node that lost its state still refuses anything
below `overlay.min_serial` from its config (what `dvpnctl roster add` printed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dvpnd.roster.authority import Verifier, verify_document
from dvpnd.roster.model import MAX_DOCUMENT_BYTES, Roster, RosterError
from dvpnd.util.fsutil import UnsafeFile, read_regular, write_atomic

DOC_FILE = "roster.json"
SERIAL_FILE = "roster.serial"


@dataclass
class RosterStore:
    dir: Path

    @property
    def doc_file(self) -> Path:
        return self.dir / DOC_FILE

    @property
    def serial_file(self) -> Path:
        return self.dir / SERIAL_FILE

    def highest_serial(self) -> int:
        try:
            text = read_regular(self.serial_file, limit=64)
        except UnsafeFile:
            return 0
        try:
            return int(text or "0")
        except ValueError:
            return 0

    def load(self, verifier: Verifier) -> tuple[Roster, bytes, bytes] | None:
        """The stored roster (verified again: the disk is not trusted more than the hub), its
        payload and document; None if there is none or it does not verify."""
        try:
            text = read_regular(self.doc_file, limit=MAX_DOCUMENT_BYTES)
        except UnsafeFile:
            return None
        if text is None:
            return None
        data = text.encode()
        try:
            roster, payload = verify_document(data, verifier, str(self.doc_file))
        except RosterError:
            return None
        return roster, payload, data

    def save(self, document: bytes, serial: int) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.doc_file, document, mode=0o644)
        if serial > self.highest_serial():
            write_atomic(self.serial_file, f"{serial}\n".encode(), mode=0o644)
