"""Group commit: concurrent single-event requests share one durable, atomic write.

Callers block (or await) until the commit holding their event is durable, so a 202 still
means "recorded". One writer thread drains whatever is queued, up to `max_batch` events,
and records it with `record_usage_from`; while it writes, the next group gathers. An event
the store refuses is answered `rejected` alone; the events beside it are still recorded.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from billing_domain.application import BillingApplication
from billing_domain.identity import Principal
from billing_domain.usage import UsageInput, UsageResult


@dataclass
class _Pending:
    item: UsageInput
    principal: Principal
    future: Future[UsageResult]


class GroupCommitter:
    def __init__(
        self,
        app: BillingApplication,
        *,
        max_batch: int = 1000,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.max_batch = max_batch
        self.on_commit = on_commit  # told each durable group's size (metrics)
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._stopped = False
        self.commits = 0
        self.events = 0
        self._thread.start()

    def submit(self, item: UsageInput, principal: Principal) -> Future[UsageResult]:
        if self._stopped:
            raise RuntimeError("group committer is stopped")
        future: Future[UsageResult] = Future()
        self._queue.put(_Pending(item, principal, future))
        return future

    def record(
        self, item: UsageInput, principal: Principal, timeout: float | None = 30.0
    ) -> UsageResult:
        """Record one event; returns when the commit that holds it is durable."""
        return self.submit(item, principal).result(timeout)

    async def record_async(self, item: UsageInput, principal: Principal) -> UsageResult:
        return await asyncio.wrap_future(self.submit(item, principal))

    def close(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Pending]) -> None:
        try:
            # The callers are independent: an event the store refuses fails alone.
            results = self.app.record_usage_from(
                [(p.item, p.principal) for p in group], atomic=False
            )
        except BaseException as error:  # an outage: every waiting caller must learn of it
            for pending in group:
                pending.future.set_exception(error)
            return
        self.commits += 1
        self.events += len(group)
        if self.on_commit is not None:
            self.on_commit(len(group))
        for pending, result in zip(group, results, strict=True):
            pending.future.set_result(result)
