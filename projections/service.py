"""The read models every interface reads: live projection versions, kept current here."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from billing_domain.application import BillingApplication
from projections import health as checks
from projections import quarantine
from projections.audit import AuditProjection
from projections.base import stamp
from projections.errors import NotQuarantined, UnknownProjection
from projections.health import STORE_ERRORS, StoreUnavailable, down_answer
from projections.ledger import InvoicesProjection
from projections.lineage import LineageReads
from projections.reads import InvoiceReads, decode_cursor, encode_cursor
from projections.rebuild import Rebuilds, base_name
from projections.runner import Runner, Version
from projections.store import ViewStore

POLL_SECONDS = 0.05
HEALTH_TIMEOUT_SECONDS = 2.0
MAX_HEALTH_PROBES = 8  # hung probes of an unreachable store, beyond which /health answers at once
DEFAULT_MAX_LAG = 10_000
log = logging.getLogger(__name__)
T = TypeVar("T")


class ProjectionService:
    """Implements projections.interface.ReadModels over the live version of each projection."""

    def __init__(
        self,
        app: BillingApplication,
        store: ViewStore,
        *,
        external_worker: bool = False,
        batch_size: int = 1000,
        max_lag: int | None = None,
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
        self.max_lag = (
            max_lag
            if max_lag is not None
            else int(os.environ.get("BILLING_HEALTH_MAX_LAG", DEFAULT_MAX_LAG))
        )
        self._probes = 0
        self._probes_lock = threading.Lock()
        self._warned: set[str] = set()
        self.auto_rebuild = True
        self.heartbeat = checks.Heartbeat(store)
        self.stale = checks.stale_seconds()

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
        with self.store.read() as cur:
            versions = self.runner.versions(cur)
            held = quarantine.counts(cur)
        rows = []
        for v in versions:
            problem = self.runner.mismatch(v)
            rows.append(
                {
                    "name": v.name,
                    "version": v.version,
                    "key": v.key,
                    "logic": v.logic,
                    "position": v.position,
                    "lag": max(head - v.position, 0),
                    "state": v.state,
                    "quarantined": held.get((v.name, v.version), 0),
                    "fingerprint": v.fingerprint,
                    "schema": "ok" if problem is None else "mismatch",
                    "problem": problem,
                }
            )
        return rows

    # Quarantine -----------------------------------------------------------------------------

    def _named(self, name: str | None) -> list[Version]:
        """`invoices`: its live, building and ready versions; `invoices_v3`: that one; None:
        those of every projection. Live versions first."""
        versions = [v for v in self.runner.versions() if v.state != "retired"]
        if name is not None:
            base = base_name(name)
            exact = re.search(r"_v(\d+)$", name)
            if exact is not None:
                every = [v for v in self.runner.versions() if v.name == base]
                versions = [v for v in every if v.version == int(exact.group(1))]
                if not versions:
                    raise UnknownProjection(f"no version {name!r}")
            else:
                versions = [v for v in versions if v.name == base]
        return sorted(versions, key=lambda v: (v.state != "live", v.name, v.version))

    def quarantined(self, name: str | None = None) -> list[dict[str, Any]]:
        """The notifications set aside by a projection's versions (all projections' when
        `name` is None), oldest first."""
        versions = self._named(name)
        with self.store.read() as cur:
            return quarantine.listed(cur, [(v.name, v.version) for v in versions])

    def retry(self, name: str, notification_id: int) -> dict[str, Any]:
        """Apply a quarantined notification again; see `Runner.retry`."""
        for version in self._named(name):
            with self.store.read() as cur:
                found = quarantine.find(cur, version.name, version.version, notification_id)
            if found is not None:
                return self.runner.retry(version, notification_id)
        raise NotQuarantined(f"notification {notification_id} is not quarantined in {name}")

    # Health ---------------------------------------------------------------------------------

    def health(self, timeout: float = HEALTH_TIMEOUT_SECONDS) -> dict[str, Any]:
        """`down` when the event store or the views do not answer within `timeout`;
        `degraded`, with the reasons, when a projection has quarantined notifications, lags
        more than `max_lag` or its runner stopped on an error; `ok` otherwise."""
        try:
            head = self._within(timeout, self.max_position)
        except STORE_ERRORS as error:
            return down_answer("event store", error)
        try:
            rows = self._within(timeout, self.status)
        except STORE_ERRORS as error:
            return down_answer("view store", error, position=head)
        reasons = checks.projection_reasons(rows, self.max_lag, self._rebuild_note)
        if self.external_worker:  # the worker is another process: its heartbeat row says
            try:
                reasons += self._within(
                    timeout, lambda: checks.worker_reasons(self.store, self.stale)
                )
            except STORE_ERRORS as error:
                return down_answer("view store", error, position=head)
        if self.last_error:
            reasons.append(f"projection runner failed: {self.last_error}")
        if self._thread is not None and not self._thread.is_alive():
            reasons.append("projection runner thread has stopped")
        return {
            "status": "degraded" if reasons else "ok",
            "store": {"status": "ok", "position": head},
            "position": head,
            "projections": [
                {k: row[k] for k in ("name", "version", "state", "position", "lag", "quarantined")}
                for row in rows
                if row["state"] != "retired"
            ],
            "reasons": reasons,
        }

    def _rebuild_note(self, name: str) -> str:
        state = self._rebuilding.get(name)
        if state is None:
            if self.running and self.auto_rebuild:
                return "; an automatic rebuild is starting"
            return "; this process does not rebuild it"
        if state["state"] == "building":
            return (
                f"; rebuilding automatically as {name}_v{state['version']} "
                f"(position {state['position']} of {state['target']}), reads switch when "
                "it has caught up"
            )
        if state["state"] == "failed":
            return f"; the automatic rebuild failed: {state['error']}"
        return ""

    def _within(self, seconds: float, call: Callable[[], T]) -> T:
        """`call()` from a daemon thread, or StoreUnavailable when it takes longer: a store
        that does not answer must not hold the caller for its connect timeout."""
        box: dict[str, Any] = {}

        def probe() -> None:
            try:
                box["value"] = call()
            except Exception as error:  # handed to the caller, which decides
                box["error"] = error
            finally:
                with self._probes_lock:
                    self._probes -= 1

        with self._probes_lock:
            if self._probes >= MAX_HEALTH_PROBES:
                raise StoreUnavailable(f"{self._probes} earlier checks are still waiting")
            self._probes += 1
        thread = threading.Thread(target=probe, name="health-probe", daemon=True)
        thread.start()
        thread.join(seconds)
        if thread.is_alive():
            raise StoreUnavailable(f"no answer within {seconds:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    # Keeping current ------------------------------------------------------------------------

    def catch_up(self) -> int:
        """Process everything recorded so far into every live version whose tables are of the
        code's schema (others are reported by `health` and rebuilt); return the position."""
        positions = [self.runner.catch_up(v) for v in self._writable()]
        return min(positions, default=0)

    def _writable(self) -> list[Version]:
        """The live versions this code may write into; a live version of another schema is
        logged once and left alone."""
        writable = []
        for version in self.runner.versions():
            if version.state != "live":
                continue
            problem = self.runner.mismatch(version)
            if problem is None:
                writable.append(version)
            elif version.key not in self._warned:
                self._warned.add(version.key)
                log.error("projection %s", problem)
        return writable

    def mismatched(self) -> list[Version]:
        """Live versions whose stored schema fingerprint is not the code's."""
        return [
            v
            for v in self.runner.versions()
            if v.state == "live" and self.runner.mismatch(v) is not None
        ]

    def rebuild_mismatched(self) -> None:
        """Build a new version beside each live version of another schema (resuming one a
        process already began) and switch reads to it once it has caught up."""
        for version in self.mismatched():
            state = self._rebuilding.get(version.name)
            if state is not None and state["state"] in ("building", "failed"):
                continue  # a failed automatic rebuild is not retried in a loop: see health
            log.warning(
                "rebuilding %s automatically: %s", version.name, self.runner.mismatch(version)
            )
            self.start_rebuild(version.name, resume=True)

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
        return all(v.position >= position for v in self._writable())

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
                if self.auto_rebuild:
                    self.rebuild_mismatched()
                if self.max_position() > min((v.position for v in self._writable()), default=0):
                    self.catch_up()
                self.last_error = None
            except Exception as error:
                self.last_error = f"{type(error).__name__}: {error}"
                log.exception("projection catch-up failed; retrying")
                self._stop.wait(1.0)
            with contextlib.suppress(*STORE_ERRORS):
                self.heartbeat.beat(self.last_error)
            self._wake.wait(poll)
            self._wake.clear()

    # Rebuilds -------------------------------------------------------------------------------

    def start_rebuild(self, name: str, *, resume: bool = False) -> dict[str, Any]:
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
                target=self._rebuild, args=(state, resume), name=f"rebuild-{base}", daemon=True
            ).start()
            return started

    def rebuild_state(self, name: str) -> dict[str, Any] | None:
        state = self._rebuilding.get(base_name(name))
        return None if state is None else dict(state)

    def _rebuild(self, state: dict[str, Any], resume: bool = False) -> None:
        try:
            if resume:
                version = self.rebuilds.resume_or_begin(state["name"])
            else:
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
        with contextlib.suppress(*STORE_ERRORS):
            self.heartbeat.stop()
        self.store.close()


def _at(moment: datetime | None) -> str | None:
    return None if moment is None else stamp(moment)
