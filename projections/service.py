"""The read models every interface reads: live projection versions, kept current here."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from typing import Any

from billing_domain.application import BillingApplication
from projections.audit import AuditProjection
from projections.base import stamp
from projections.ledger import InvoicesProjection
from projections.lineage import LineageReads
from projections.reads import InvoiceReads, decode_cursor, encode_cursor
from projections.rebuild import Rebuilds, base_name
from projections.runner import Runner, Version
from projections.store import ViewStore

POLL_SECONDS = 0.05
log = logging.getLogger(__name__)


class ProjectionService:
    """Implements projections.interface.ReadModels over the live version of each projection."""

    def __init__(
        self,
        app: BillingApplication,
        store: ViewStore,
        *,
        external_worker: bool = False,
        batch_size: int = 1000,
    ) -> None:
        self.app = app
        self.store = store
        self.runner = Runner(app, store, batch_size=batch_size)
        self.external_worker = external_worker
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.last_error: str | None = None
        self.rebuilds = Rebuilds(self.runner)
        self._rebuilding: dict[str, dict[str, Any]] = {}
        self._rebuild_lock = threading.Lock()

    # Positions --------------------------------------------------------------------------

    def max_position(self) -> int:
        """The newest notification id in the log: what a writer's read-your-writes waits for."""
        return int(self.app.recorder.max_notification_id() or 0)

    def _live(self, name: str) -> Version:
        return self.runner.live(name)

    def _meta(self, version: Version) -> dict[str, Any]:
        return {"position": version.position, "lag": max(self.max_position() - version.position, 0)}

    def _invoices(self) -> tuple[Version, InvoiceReads]:
        version = self._live("invoices")
        projection = self.runner.projection(version)
        assert isinstance(projection, InvoicesProjection)
        return version, InvoiceReads(projection)

    # Reads --------------------------------------------------------------------------------

    def usage(self, customer_id: str, period: str, as_of: datetime | None = None) -> dict[str, Any]:
        version, reads = self._invoices()
        with self.store.read() as cur:
            items = reads.usage(cur, customer_id, period, _at(as_of))
        return {
            "customer_id": customer_id,
            "period": period,
            "items": items,
            "as_of": _at(as_of),
            **self._meta(version),
        }

    def invoices(
        self,
        customer_id: str | None = None,
        period: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
        as_of: datetime | None = None,
    ) -> dict[str, Any]:
        version, reads = self._invoices()
        with self.store.read() as cur:
            items, next_cursor = reads.invoices(cur, customer_id, period, cursor, limit)
            if as_of is not None:
                known = [self._as_of_item(reads, cur, item, _at(as_of)) for item in items]
                items = [item for item in known if item is not None]
        return {"items": items, "next_cursor": next_cursor, **self._meta(version)}

    @staticmethod
    def _as_of_item(
        reads: InvoiceReads, cur: Any, item: dict[str, Any], as_of: str | None
    ) -> dict[str, Any] | None:
        view = reads.invoice(cur, item["invoice_id"], item["revision"], as_of)
        if view is None:
            return None
        return {k: view[k] for k in item if k in view}

    def invoice(
        self, invoice_id: str, revision: int | None = None, as_of: datetime | None = None
    ) -> dict[str, Any] | None:
        version, reads = self._invoices()
        with self.store.read() as cur:
            view = reads.invoice(cur, invoice_id, revision, _at(as_of))
        return None if view is None else {**view, **self._meta(version)}

    def revisions(self, invoice_id: str) -> list[dict[str, Any]] | None:
        _, reads = self._invoices()
        with self.store.read() as cur:
            return reads.revisions(cur, invoice_id)

    def lineage(
        self, invoice_id: str, line: int, cursor: str | None = None, limit: int = 100
    ) -> dict[str, Any] | None:
        version, reads = self._invoices()
        with self.store.read() as cur:
            found = LineageReads(self.app, reads).lineage(cur, invoice_id, line, cursor, limit)
        return None if found is None else {**found, **self._meta(version)}

    def lineage_digest(self, customer_id: str, period: str) -> str:
        """The lineage digest of a period's billed items as the lineage rows hold them."""
        _, reads = self._invoices()
        with self.store.read() as cur:
            return reads.lineage_digest(cur, customer_id, period)

    def audit(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        version = self._live("audit")
        projection = self.runner.projection(version)
        assert isinstance(projection, AuditProjection)
        where, params = ["1 = 1"], list[Any]()
        if since is not None:
            where.append("at >= ?")
            params.append(stamp(since))
        if until is not None:
            where.append("at < ?")
            params.append(stamp(until))
        if actor is not None:
            where.append("(actor = ? OR emitter = ?)")
            params += [actor, actor]
        after = decode_cursor(cursor, int)
        if after is not None:
            where.append("position > ?")
            params.append(after[0])
        with self.store.read() as cur:
            rows = cur.all(
                f"SELECT * FROM {projection.t('entries')} WHERE "
                f"{' AND '.join(where)} ORDER BY position LIMIT ?",
                [*params, limit + 1],
            )
        items = [
            {
                "position": int(r["position"]),
                "at": r["at"],
                "action": r["action"],
                "actor": r["actor"],
                "emitter": r["emitter"],
                "key_id": r["key_id"],
                "subject": r["subject"],
                "detail": json.loads(r["detail"]),
            }
            for r in rows[:limit]
        ]
        next_cursor = encode_cursor(items[-1]["position"]) if len(rows) > limit else None
        return {"items": items, "next_cursor": next_cursor, **self._meta(version)}

    def status(self) -> list[dict[str, Any]]:
        head = self.max_position()
        return [
            {
                "name": v.name,
                "version": v.version,
                "key": v.key,
                "logic": v.logic,
                "position": v.position,
                "lag": max(head - v.position, 0),
                "state": v.state,
            }
            for v in self.runner.versions()
        ]

    # Keeping current ------------------------------------------------------------------------

    def catch_up(self) -> int:
        """Process everything recorded so far into every live version; return the position."""
        positions = [self.runner.catch_up(v) for v in self.runner.versions() if v.state == "live"]
        return min(positions, default=0)

    def wait(self, position: int, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._reached(position):
                return True
            if not self.external_worker and not self.running:
                self.catch_up()  # nobody else keeps the views current: do it now
                return self._reached(position)
            self._wake.set()
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _reached(self, position: int) -> bool:
        return all(v.position >= position for v in self.runner.versions() if v.state == "live")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start_background(self) -> None:
        """Keep the live versions current from a thread of this process (`billing serve`)."""
        if self.external_worker or self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name="projections", daemon=True)
        self._thread.start()

    def stop_background(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def run_forever(self, poll: float = POLL_SECONDS) -> None:
        """The worker loop: catch up, then wait for new events; errors are kept and retried."""
        while not self._stop.is_set():
            try:
                if self.max_position() > min(
                    (v.position for v in self.runner.versions() if v.state == "live"), default=0
                ):
                    self.catch_up()
                self.last_error = None
            except Exception as error:
                self.last_error = f"{type(error).__name__}: {error}"
                log.exception("projection catch-up failed; retrying")
                self._stop.wait(1.0)
            self._wake.wait(poll)
            self._wake.clear()

    # Rebuilds -------------------------------------------------------------------------------

    def start_rebuild(self, name: str) -> dict[str, Any]:
        """Build the next version of a projection in the background and switch reads to it."""
        base = base_name(name)
        with self._rebuild_lock:
            current = self._rebuilding.get(base)
            if current is not None and current["state"] == "building":
                return dict(current)
            state: dict[str, Any] = {
                "name": base,
                "version": None,
                "state": "building",
                "position": 0,
                "target": self.max_position(),
                "error": None,
            }
            self._rebuilding[base] = state
            started = dict(state)
            threading.Thread(
                target=self._rebuild, args=(state,), name=f"rebuild-{base}", daemon=True
            ).start()
            return started

    def rebuild_state(self, name: str) -> dict[str, Any] | None:
        state = self._rebuilding.get(base_name(name))
        return None if state is None else dict(state)

    def _rebuild(self, state: dict[str, Any]) -> None:
        try:
            version = self.rebuilds.begin(state["name"])
            state["version"] = version.version

            def progress(position: int, _weight: int) -> None:
                state["position"] = position

            self.rebuilds.build(version, progress=progress, should_stop=self._stop.is_set)
            self.rebuilds.switch(version)
            state["state"] = "live"
        except Exception as error:
            log.exception("rebuild of %s failed", state["name"])
            state["state"] = "failed"
            state["error"] = f"{type(error).__name__}: {error}"

    def close(self) -> None:
        self.stop_background()
        self.store.close()


def _at(moment: datetime | None) -> str | None:
    return None if moment is None else stamp(moment)
