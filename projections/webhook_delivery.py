"""Sending the outbox: at least once, in order per endpoint, signed per Standard Webhooks.

Each endpoint's queue is its pending deliveries in log order; only its head is attempted, so
a receiver that is down or slow holds back its own queue and nobody else's (each send runs on
a pool thread, at most one per endpoint). A head is claimed with a lease (the send timeout
plus a margin) and its attempt counted before it is sent; the outcome is written after. A
process killed between the send and that write leaves the lease to expire and the delivery is
sent again with the same `webhook-id`, so the receiver can drop the repeat.

A failed attempt waits `max(base, uniform(0, min(cap, base * 2^(attempts-1))))` (full jitter
above a floor of `base`), until `give_up_after` has passed since its first attempt: then it is
`failed` and the queue moves on. After `failing_after` failed attempts in a row an endpoint is
`failing`; its head is still retried at the backoff pace, never faster. A success clears it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from billing_domain.errors import BillingError
from billing_domain.settings import SettingsError, parse_duration
from projections.base import stamp
from projections.runner import Runner
from projections.store import ViewStore
from projections.webhooks import DELIVERIES, HEALTH

log = logging.getLogger(__name__)
LEASE_MARGIN_SECONDS = 5.0
MAX_ERROR_TEXT = 300
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class DeliverySettings:
    timeout: float = 10.0
    backoff_base: float = 5.0
    backoff_max: float = 3600.0
    give_up_after: float = 86400.0
    failing_after: int = 5
    poll: float = 0.25
    concurrency: int = 8

    @classmethod
    def from_env(cls, env: dict[str, str]) -> DeliverySettings:
        def seconds(name: str, default: str, low: float, high: float) -> float:
            text = env.get(name, "") or default
            value = _duration(name, text)
            if not low <= value <= high:
                raise SettingsError(f"{name}={text!r}: must be from {low:g} s to {high:g} s")
            return value

        failing = env.get("BILLING_WEBHOOK_FAILING_AFTER", "") or "5"
        if not failing.isdigit() or not 1 <= int(failing) <= 1000:
            raise SettingsError(
                f"BILLING_WEBHOOK_FAILING_AFTER={failing!r}: a whole number from 1 to 1000"
            )
        return cls(
            timeout=seconds("BILLING_WEBHOOK_TIMEOUT", "10s", 0.1, 60),
            backoff_base=seconds("BILLING_WEBHOOK_BACKOFF_BASE", "5s", 0.05, 3600),
            backoff_max=seconds("BILLING_WEBHOOK_BACKOFF_MAX", "1h", 0.05, 86400),
            give_up_after=seconds("BILLING_WEBHOOK_GIVE_UP_AFTER", "24h", 1, 30 * 86400),
            failing_after=int(failing),
        )


def _duration(name: str, text: str) -> float:
    """`0.2s`-style fractions (for tests) or the project's whole durations (`5s`, `1h`)."""
    stripped = text.strip()
    if stripped.endswith("ms") and stripped[:-2].isdigit():
        return int(stripped[:-2]) / 1000
    return parse_duration(name, stripped).total_seconds()


def backoff(attempts: int, settings: DeliverySettings, rng: random.Random) -> float:
    window = min(settings.backoff_max, settings.backoff_base * 2 ** max(attempts - 1, 0))
    return max(settings.backoff_base, rng.uniform(0, window))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with the base64-decoded secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@dataclass
class Outcome:
    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def http_send(url: str, headers: dict[str, str], body: bytes, timeout: float) -> Outcome:
    """One POST with a bounded timeout; redirects are not followed (a 3xx is a failure)."""
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname or "", parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        error = None if 200 <= response.status < 300 else f"HTTP {response.status}"
        return Outcome(response.status, error)
    except (OSError, http.client.HTTPException) as failure:
        return Outcome(None, f"{type(failure).__name__}: {failure}"[:MAX_ERROR_TEXT])
    finally:
        connection.close()


class DeliveryWorker:
    def __init__(
        self,
        app: Any,
        store: ViewStore,
        runner: Runner,
        settings: DeliverySettings,
        *,
        send: Callable[[str, dict[str, str], bytes, float], Outcome] = http_send,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.runner = runner
        self.settings = settings
        self.send = send
        self.clock = clock
        self.rng = rng or random.Random()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.last_error: str | None = None

    # Running ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.settings.concurrency, "webhook-send")
        self._thread = threading.Thread(target=self._loop, name="webhook-delivery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch()
                self.last_error = None
            except Exception as error:  # the store may be down: kept for health, retried
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("webhook dispatch failed; retrying: %s", self.last_error)
                self._stop.wait(1.0)
            self._stop.wait(self.settings.poll)

    def dispatch(self) -> int:
        """Claim the due head of every endpoint not already sending and hand it to the pool
        (or, without a pool, send it here); return how many were claimed."""
        claimed = 0
        for row in self._due_heads():
            endpoint_id = row["endpoint_id"]
            with self._busy_lock:
                if endpoint_id in self._busy:
                    continue
                self._busy.add(endpoint_id)
            try:
                if not self._claim(row):
                    self._release(endpoint_id)
                    continue
            except BaseException:
                self._release(endpoint_id)
                raise
            claimed += 1
            if self._pool is None:
                self._attempt(row)
            else:
                self._pool.submit(self._attempt, row)
        return claimed

    def run_until_idle(self, timeout: float = 10.0) -> None:
        """Send everything due now, in this thread (tests and `--once` runs)."""
        deadline = time.monotonic() + timeout
        while self.dispatch() and time.monotonic() < deadline:
            pass

    def _release(self, endpoint_id: str) -> None:
        with self._busy_lock:
            self._busy.discard(endpoint_id)

    # The queue ----------------------------------------------------------------------------

    def _due_heads(self) -> list[dict[str, Any]]:
        """Each active endpoint's head, if it is due and not leased: one index seek per
        endpoint, so a long backlog does not make the poll slower."""
        try:
            version = self.runner.live("webhooks")
        except KeyError:
            return []
        endpoints = self.runner.projection(version).t("endpoints")
        now = stamp(self.clock())
        heads = []
        with self.store.read() as cur:
            active = cur.all(
                f"SELECT endpoint_id, url FROM {endpoints} WHERE disabled_position IS NULL"
            )
            for endpoint in active:
                head = cur.one(
                    "SELECT endpoint_id, message_id, seq, payload, attempts, first_attempt_at, "
                    f"next_attempt_at, lease_until FROM {DELIVERIES} WHERE endpoint_id = ? "
                    "AND status = 'pending' ORDER BY seq LIMIT 1",
                    [endpoint["endpoint_id"]],
                )
                if head is None or head["next_attempt_at"] > now:
                    continue
                if head["lease_until"] is not None and head["lease_until"] >= now:
                    continue
                heads.append({**head, "url": endpoint["url"]})
        return sorted(heads, key=lambda h: int(h["seq"]))

    def _claim(self, row: dict[str, Any]) -> bool:
        now = self.clock()
        lease = now + timedelta(seconds=self.settings.timeout + LEASE_MARGIN_SECONDS)
        with self.store.write() as cur:
            return (
                cur.execute(
                    f"UPDATE {DELIVERIES} SET lease_until = ?, attempts = attempts + 1, "
                    "first_attempt_at = COALESCE(first_attempt_at, ?) WHERE endpoint_id = ? "
                    "AND message_id = ? AND status = 'pending' AND attempts = ? AND "
                    "(lease_until IS NULL OR lease_until < ?)",
                    [
                        stamp(lease),
                        stamp(now),
                        row["endpoint_id"],
                        row["message_id"],
                        row["attempts"],
                        stamp(now),
                    ],
                ).rowcount
                == 1
            )

    def _attempt(self, row: dict[str, Any]) -> None:
        endpoint_id = row["endpoint_id"]
        try:
            outcome = self._send(row)
            self._record(row, outcome)
        except Exception as error:  # a store error: the lease expires and it is sent again
            log.warning("webhook delivery to %s not recorded: %s", endpoint_id, error)
        finally:
            self._release(endpoint_id)

    def _send(self, row: dict[str, Any]) -> Outcome:
        try:
            secret = self.app.webhook_secret(row["endpoint_id"])
        except BillingError as error:
            return Outcome(None, str(error)[:MAX_ERROR_TEXT])
        body = row["payload"].encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "billing-webhooks/1",
            "webhook-id": row["message_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, row["message_id"], timestamp, body),
        }
        return self.send(row["url"], headers, body, self.settings.timeout)

    def _record(self, row: dict[str, Any], outcome: Outcome) -> None:
        now = self.clock()
        attempts = int(row["attempts"]) + 1
        key = [row["endpoint_id"], row["message_id"]]
        with self.store.write() as cur:
            if outcome.delivered:
                cur.execute(
                    f"UPDATE {DELIVERIES} SET status = 'delivered', delivered_at = ?, "
                    "last_status = ?, last_error = NULL, lease_until = NULL, "
                    "next_attempt_at = NULL WHERE endpoint_id = ? AND message_id = ?",
                    [stamp(now), outcome.status, *key],
                )
                self._health(cur, row["endpoint_id"], now, success=True)
                return
            first = row["first_attempt_at"] or stamp(now)
            elapsed = (now - _parse(first)).total_seconds()
            if elapsed >= self.settings.give_up_after:
                status, next_at = "failed", None
            else:
                delay = backoff(attempts, self.settings, self.rng)
                status, next_at = "pending", stamp(now + timedelta(seconds=delay))
            cur.execute(
                f"UPDATE {DELIVERIES} SET status = ?, next_attempt_at = ?, last_status = ?, "
                "last_error = ?, lease_until = NULL WHERE endpoint_id = ? AND message_id = ?",
                [status, next_at, outcome.status, outcome.error, *key],
            )
            self._health(cur, row["endpoint_id"], now, success=False)

    def _health(self, cur: Any, endpoint_id: str, now: datetime, *, success: bool) -> None:
        cur.execute(
            f"INSERT INTO {HEALTH} (endpoint_id, consecutive_failures) VALUES (?, 0) "
            "ON CONFLICT DO NOTHING",
            [endpoint_id],
        )
        if success:
            cur.execute(
                f"UPDATE {HEALTH} SET consecutive_failures = 0, failing_since = NULL, "
                "last_success_at = ? WHERE endpoint_id = ?",
                [stamp(now), endpoint_id],
            )
            return
        cur.execute(
            f"UPDATE {HEALTH} SET consecutive_failures = consecutive_failures + 1, "
            "last_failure_at = ?, failing_since = CASE WHEN failing_since IS NULL AND "
            "consecutive_failures + 1 >= ? THEN ? ELSE failing_since END WHERE endpoint_id = ?",
            [stamp(now), self.settings.failing_after, stamp(now), endpoint_id],
        )


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
