"""The roster in force on a confidential node: offered documents verified, judged and kept.

Every document, from the hub or from `dvpnctl roster publish`, goes the same way: the proof
against the authority key from the config (nothing in the payload is read before), the policy
(roster/model.judge: never older than the highest serial seen or `overlay.min_serial`, never
one that arrives expired), then the disk (durably, the serial last), then memory. A refused
document changes nothing and is counted by reason.

`offer` verifies, parses every member and fsyncs two files: the daemon calls it in a worker
thread, never on its event loop (which answers DNS, the status page and the roster's long
polls meanwhile; an fsync on a CVM's encrypted volume can take tens of milliseconds). Offers
are serialized, and the roster in force changes in one assignment, so a reader on the loop sees
the old one or the new one, whole."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from dvpnd.config.model import Config
from dvpnd.daemon.status import RosterView
from dvpnd.roster.authority import Ed25519Verifier, verify_document
from dvpnd.roster.model import Roster, RosterError, judge
from dvpnd.roster.store import RosterStore

log = logging.getLogger("dvpnd.roster")


def etag_of(document: bytes) -> str:
    return '"' + hashlib.sha256(document).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class Kept:
    """The roster in force, with the document it came in and that document's ETag."""

    roster: Roster
    payload: bytes
    document: bytes
    etag: str


class RosterKeeper:
    def __init__(self, config: Config, clock: Callable[[], float]):
        assert config.overlay.authority is not None
        self.config = config
        self.clock = clock
        self.verifier = Ed25519Verifier(config.overlay.authority)
        self.store = RosterStore(config.state_dir)
        self.kept: Kept | None = None
        self.refused: Counter[str] = Counter()
        self.last_refusal: str | None = None
        self._offering = threading.Lock()

    @property
    def roster(self) -> Roster | None:
        return self.kept.roster if self.kept else None

    @property
    def document(self) -> bytes | None:
        return self.kept.document if self.kept else None

    @property
    def etag(self) -> str | None:
        return self.kept.etag if self.kept else None

    def highest_serial(self) -> int:
        return max(self.store.highest_serial(), self.config.overlay.min_serial)

    def load(self) -> Roster | None:
        """The roster kept on disk, if it still verifies and is not below what this node has seen.
        An expired one is kept in force (see judge)."""
        got = self.store.load(self.verifier)
        if got is None:
            return None
        roster, payload, document = got
        if roster.serial < self.highest_serial() or roster.network != self.config.network:
            log.warning("%s: serial %d is below %d (or another overlay); not using it",
                        self.store.doc_file, roster.serial, self.highest_serial())
            return None
        self._adopt(roster, payload, document)
        log.info("roster serial %d from %s: %d members", roster.serial, self.store.doc_file, len(roster.members))
        return roster

    def offer(self, document: bytes, origin: str) -> bool:
        """Adopt `document` if it verifies and is newer: True if adopted, False if it is the roster
        in force; RosterError (counted, logged) if refused. Blocking (the disk): see the module."""
        with self._offering:
            return self._offer(document, origin)

    def _offer(self, document: bytes, origin: str) -> bool:
        try:
            roster, payload = verify_document(document, self.verifier, origin)
            new = judge(roster, payload, network=self.config.network, highest_serial=self.highest_serial(),
                        current_payload=self.kept.payload if self.kept else None, now=self.clock(), origin=origin)
        except RosterError as e:
            self.refused[e.reason] += 1
            self.last_refusal = str(e)
            log.warning("roster refused (%s): %s", e.reason, e)
            raise
        if not new:
            return False
        self.store.save(document, roster.serial)
        before = self.roster
        self._adopt(roster, payload, document)
        log.info("roster serial %d adopted from %s: %d members%s", roster.serial, origin, len(roster.members),
                 "" if before is None else f" (was serial {before.serial}, {len(before.members)} members)")
        return True

    def _adopt(self, roster: Roster, payload: bytes, document: bytes) -> None:
        self.kept = Kept(roster, payload, document, etag_of(document))

    def view(self, membership_problem: str | None) -> RosterView:
        r = self.roster
        return RosterView(serial=r.serial if r else None, issued=r.issued if r else None,
                          expires=r.expires if r else None, members=len(r.members) if r else 0,
                          membership_problem=membership_problem, refused=dict(self.refused),
                          last_refusal=self.last_refusal)
