"""Failed authentication, limited per client address and per key id, in bounded memory."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from billing_domain.errors import BillingError

DEFAULT_FAILURES_PER_MINUTE = 20
DEFAULT_MAX_BUCKETS = 10_000


class RateLimited(BillingError):
    """Too many failed authentications from this client or for this key id; retry later."""

    code = "rate_limited"
    field = "authorization"

    def __init__(self, reason: str, *, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Buckets:
    """Token buckets by name, refilled continuously; the least recently used go first."""

    def __init__(self, capacity: int, per_second: float, max_buckets: int) -> None:
        self.capacity = float(capacity)
        self.per_second = per_second
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, name: str, now: float) -> float:
        tokens, then = self._buckets.get(name, (self.capacity, now))
        return min(self.capacity, tokens + (now - then) * self.per_second)

    def wait(self, name: str, now: float) -> float:
        """Seconds until `name` may fail once more; 0 when it may now."""
        if name not in self._buckets:
            return 0.0
        tokens = self._tokens(name, now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.per_second

    def take(self, name: str, now: float) -> None:
        tokens = self._tokens(name, now)
        self._buckets[name] = (max(tokens - 1, 0.0), now)
        self._buckets.move_to_end(name)
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class FailureThrottle:
    """After `per_minute` failures within a minute a client, or a key id, must wait.

    Only failures spend tokens, so a caller whose keys are good is never slowed."""

    def __init__(
        self,
        per_minute: int = DEFAULT_FAILURES_PER_MINUTE,
        *,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._clients = _Buckets(per_minute, per_minute / 60, max_buckets)
        self._keys = _Buckets(per_minute, per_minute / 60, max_buckets)

    def wait(self, client: str | None, key_id: str | None) -> float:
        """Seconds before this client and key id may try again; 0 when they may now."""
        with self._lock:
            now = self._monotonic()
            wait = self._clients.wait(client, now) if client else 0.0
            if key_id:
                wait = max(wait, self._keys.wait(key_id, now))
        return wait

    def clear(self, client: str, key_id: str | None) -> bool:
        return self.wait(client, key_id) == 0

    def check(self, client: str | None, key_id: str | None) -> None:
        """Raise RateLimited when this client or key id has failed too often of late."""
        wait = self.wait(client, key_id)
        if wait > 0:
            raise RateLimited(
                f"too many failed authentications; retry in {math.ceil(wait)} s",
                retry_after=max(1, math.ceil(wait)),
            )

    def failed(self, client: str, key_id: str | None) -> None:
        with self._lock:
            now = self._monotonic()
            self._clients.take(client, now)
            if key_id:
                self._keys.take(key_id, now)

    @property
    def tracked(self) -> int:
        """How many clients and key ids are remembered (bounded by max_buckets each)."""
        return len(self._clients) + len(self._keys)
