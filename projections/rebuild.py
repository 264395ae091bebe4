"""Rebuilding a projection: a new version built beside the live one, switched when caught up."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from projections import quarantine
from projections.errors import UnknownProjection
from projections.runner import REGISTRY, TRACKING, Runner, Version, insert_version

log = logging.getLogger(__name__)


def base_name(name: str) -> str:
    """`invoices` and `invoices_v3` both name the invoices projection."""
    base = re.sub(r"_v\d+$", "", name)
    if base not in REGISTRY:
        raise UnknownProjection(
            f"no projection named {name!r}; known: {', '.join(sorted(REGISTRY))}"
        )
    return base


class Rebuilds:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def begin(self, name: str) -> Version:
        """Create the next version's empty tables with the newest registered logic."""
        name = base_name(name)
        logic = max(REGISTRY[name])
        with self.runner.store.write() as cur:
            cur.lock_ddl()
            versions = [v for v in self.runner.versions(cur) if v.name == name]
            for stale in versions:
                if stale.state in ("building", "ready", "retired"):
                    self.runner.projection(stale).drop(cur)
                    quarantine.forget(cur, name, stale.version)
                    cur.execute(
                        f"DELETE FROM {TRACKING} WHERE name = ? AND version = ?",
                        [name, stale.version],
                    )
            number = max(v.version for v in versions) + 1  # never reuse a retired number
            version = Version(name, number, logic, "building", 0)
            projection = self.runner.projection(version)
            version.fingerprint = projection.fingerprint()
            insert_version(cur, version)
            projection.create(cur)
        return version

    def resume_or_begin(self, name: str) -> Version:
        """A building or ready version of the newest logic and the code's schema, if one
        exists (another process may be building it: the position's compare-and-set keeps
        them apart), else a new one (`begin`)."""
        name = base_name(name)
        logic = max(REGISTRY[name])
        for version in reversed(self.runner.versions()):
            if (
                version.name == name
                and version.state in ("building", "ready")
                and version.logic == logic
                and self.runner.mismatch(version) is None
            ):
                return version
        return self.begin(name)

    def build(
        self,
        version: Version,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Catch the new version up with the log from position zero, batch by batch, with
        the work only the newest state decides (open periods' drafts) deferred to one pass
        at the end (`Runner.settle`); then it is `ready`. Stopped early, it stays `building`
        (a `switch` settles it)."""
        self._set_state(version, "building", "ready")  # deferred work is pending again
        position = self.runner.catch_up(
            version, progress=progress, should_stop=should_stop, big=True, defer=True
        )
        if should_stop is not None and should_stop():
            return position
        position = self._settle(version, progress, should_stop) or position
        self._set_state(version, "ready", "building")
        return position

    def _settle(
        self,
        version: Version,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int | None:
        """Do the deferred work. If it fails (a draft that cannot be priced: a poison
        quantity), the culprit is an event the batch fold cannot name, so the version is
        built again from zero without deferring: each event whose draft fails is then
        quarantined alone, as in a live catch-up. Returns the new position if rebuilt."""
        try:
            self.runner.settle(version)
            return None
        except Exception as error:
            if quarantine.store_failure(error):
                raise
            log.warning(
                "%s: a deferred draft failed (%s: %s); building it again event by event "
                "so the event that causes it is quarantined",
                version.key,
                type(error).__name__,
                error,
            )
        self.runner.restart(version)
        return self.runner.catch_up(
            version, progress=progress, should_stop=should_stop, big=True, defer=False
        )

    def diff(self, version: Version) -> list[dict[str, Any]]:
        live = self.runner.live(version.name)
        with self.runner.store.read() as cur:
            return self.runner.projection(version).changes(cur, self.runner.projection(live))

    def switch(self, version: Version) -> Version:
        """Catch up to the head of the log, then make this version the one reads use."""
        for _ in range(5):
            head = int(self.runner.app.recorder.max_notification_id() or 0)
            if self.runner.catch_up(version) >= head:
                break
        state = next(v.state for v in self.runner.versions() if v.key == version.key)
        if state == "building":  # its build was stopped before it settled
            self._settle(version)  # (built again from zero, it is caught up to the head)
        with self.runner.store.write() as cur:
            cur.execute(
                f"UPDATE {TRACKING} SET state = 'retired' WHERE name = ? AND state = 'live'",
                [version.name],
            )
            cur.execute(
                f"UPDATE {TRACKING} SET state = 'live' WHERE name = ? AND version = ?",
                [version.name, version.version],
            )
        live = self.runner.live(version.name)
        # Receivers of projection.rebuilt learn of it from the log; the switch stands either way.
        try:
            self.runner.app.note_projection_rebuilt(live.name, live.version, live.position)
        except Exception as error:
            log.warning("the switch of %s was not recorded in the log: %s", live.key, error)
        return live

    def _set_state(self, version: Version, state: str, only_from: str) -> None:
        with self.runner.store.write() as cur:
            cur.execute(
                f"UPDATE {TRACKING} SET state = ? WHERE name = ? AND version = ? AND state = ?",
                [state, version.name, version.version, only_from],
            )
