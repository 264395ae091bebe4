"""The identities projection: emitters and keys as operators list them, and each emitter's
activity per day (usage accepted, retries, conflicts, refusals; customers and meters reached).

Accepted usage comes from the usage events (their records name the emitter); duplicates,
conflicts and refusals from the audit facts that count them. A refusal of an unknown caller
names only a key id (an expired key, say): it is counted for that key's holder.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from billing_domain.errors import InvalidInput
from billing_domain.usage import UsageRecord
from projections.base import Projection, stamp
from projections.reads import decode_cursor, encode_cursor
from projections.store import Cursor

KEY_TOPICS = frozenset({"Key.Issued", "Key.Revoked", "Key.Rotated", "Key.Retired"})
EMITTER_TOPICS = frozenset({"Emitter.Registered", "Emitter.Updated", "Emitter.Offboarded"})
COUNTS = ("accepted", "duplicate", "conflict", "refused")
UNNAMED_CALLERS = ("unknown", "anonymous")
MAX_DAYS = 366


def _stamp(moment: Any) -> str | None:
    return None if moment is None else stamp(moment)


def _iso(text: str | None) -> str | None:
    """A stored stamp as RFC 3339 to the second, as every time the service answers."""
    return None if text is None else text[:19] + "Z"


class ActivityProjection(Projection):
    name = "activity"
    topics = (
        KEY_TOPICS
        | EMITTER_TOPICS
        | frozenset({"KeyUse.Noted", "BillingPeriod.UsageRecorded", "AuditFact.Recorded"})
    )

    def tables(self) -> dict[str, str]:
        return {
            "emitters": "emitter_id TEXT PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, "
            "name TEXT NOT NULL, owner TEXT, "
            "registered_at TEXT NOT NULL, offboarded_at TEXT, reason TEXT",
            "keys": "key_id TEXT PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, role TEXT NOT NULL, "
            "name TEXT NOT NULL, "
            "emitter_id TEXT, created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT, "
            "last_used_at TEXT, replaces TEXT, replaced_by TEXT",
            "days": "emitter TEXT NOT NULL, day TEXT NOT NULL, accepted BIGINT NOT NULL, "
            "duplicate BIGINT NOT NULL, conflict BIGINT NOT NULL, refused BIGINT NOT NULL, "
            "PRIMARY KEY (emitter, day)",
            "reached": "emitter TEXT NOT NULL, day TEXT NOT NULL, kind TEXT NOT NULL, "
            "name TEXT NOT NULL, PRIMARY KEY (emitter, day, kind, name)",
        }

    def apply(self, cur: Cursor, events: Sequence[tuple[int, str, Any]]) -> None:
        counts: dict[tuple[str, str], list[int]] = {}
        reached: set[tuple[str, str, str, str]] = set()
        used: dict[str, str] = {}
        facts = []
        for _, topic, e in events:
            if topic in KEY_TOPICS:
                self._key(cur, topic, e)
            elif topic in EMITTER_TOPICS:
                self._emitter(cur, topic, e)
            elif topic == "KeyUse.Noted":
                at = stamp(e.used_at)
                used[e.key_id] = max(used.get(e.key_id, at), at)
            elif topic == "BillingPeriod.UsageRecorded":
                day = stamp(e.received_at)[:10]
                counts.setdefault((e.emitter, day), [0, 0, 0, 0])[0] += len(e.records)
                for record in map(UsageRecord._make, e.records):
                    reached.add((e.emitter, day, "customer", record.customer_id))
                    reached.add((e.emitter, day, "meter", record.meter))
            else:
                facts.append(e)
        holders = self._holders(cur, facts)
        for e in facts:
            emitter = (
                holders.get(e.key_id, e.emitter) if e.emitter in UNNAMED_CALLERS else e.emitter
            )
            column = {"usage.duplicate": 1, "usage.conflict": 2}.get(e.action, 3)
            counts.setdefault((emitter, stamp(e.at)[:10]), [0, 0, 0, 0])[column] += int(
                getattr(e, "count", 1) or 1
            )
        for key_id, at in used.items():
            cur.execute(
                f"UPDATE {self.t('keys')} SET last_used_at = ? WHERE key_id = ? "
                "AND (last_used_at IS NULL OR last_used_at < ?)",
                [at, key_id, at],
            )
        days = self.t("days")
        cur.executemany(
            f"INSERT INTO {days} (emitter, day, {', '.join(COUNTS)}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (emitter, day) DO UPDATE SET "
            + ", ".join(f"{c} = {days}.{c} + excluded.{c}" for c in COUNTS),
            [(emitter, day, *numbers) for (emitter, day), numbers in counts.items()],
        )
        cur.executemany(
            f"INSERT INTO {self.t('reached')} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            sorted(reached),
        )

    def _holders(self, cur: Cursor, facts: list[Any]) -> dict[str, str]:
        """The holder of each key id that refused callers named (few: one per kind and window)."""
        holders = {}
        for key_id in {e.key_id for e in facts if e.emitter in UNNAMED_CALLERS}:
            row = cur.one(
                f"SELECT emitter_id, name FROM {self.t('keys')} WHERE key_id = ?", [key_id]
            )
            if row is not None:
                holders[key_id] = row["emitter_id"] or row["name"]
        return holders

    def _key(self, cur: Cursor, topic: str, e: Any) -> None:
        keys = self.t("keys")
        if topic == "Key.Issued":
            cur.execute(
                f"INSERT INTO {keys} (key_id, uuid, role, name, emitter_id, created_at, "
                "expires_at, replaces) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    e.key_id,
                    e.originator_id.hex,
                    e.role,
                    e.name,
                    e.emitter_id,
                    stamp(getattr(e, "issued_at", None) or e.timestamp),
                    _stamp(getattr(e, "expires_at", None)),
                    getattr(e, "replaces", None),
                ],
            )
        elif topic == "Key.Rotated":
            cur.execute(
                f"UPDATE {keys} SET replaced_by = ?, expires_at = CASE WHEN expires_at IS NULL "
                "OR expires_at > ? THEN ? ELSE expires_at END WHERE uuid = ?",
                [e.replaced_by, stamp(e.expires_at), stamp(e.expires_at), e.originator_id.hex],
            )
        else:  # Revoked, or Retired with its emitter
            at = getattr(e, "at", None) or e.timestamp
            cur.execute(
                f"UPDATE {keys} SET revoked_at = ? WHERE uuid = ? AND revoked_at IS NULL",
                [stamp(at), e.originator_id.hex],
            )

    def _emitter(self, cur: Cursor, topic: str, e: Any) -> None:
        emitters = self.t("emitters")
        if topic == "Emitter.Registered":
            cur.execute(
                f"INSERT INTO {emitters} (emitter_id, uuid, name, owner, registered_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    e.emitter_id,
                    e.originator_id.hex,
                    e.name,
                    getattr(e, "owner", None),
                    stamp(e.timestamp),
                ],
            )
        elif topic == "Emitter.Updated":
            cur.execute(
                f"UPDATE {emitters} SET name = ?, owner = ? WHERE uuid = ?",
                [e.name, e.owner, e.originator_id.hex],
            )
        else:
            cur.execute(
                f"UPDATE {emitters} SET offboarded_at = ?, reason = ? WHERE uuid = ?",
                [stamp(e.at), e.reason, e.originator_id.hex],
            )

    def changes(self, cur: Cursor, live: Projection) -> list[dict[str, Any]]:
        """Days whose counts differ between the live view and this one."""
        rows = cur.all(
            f"SELECT COALESCE(o.emitter, n.emitter) AS emitter, COALESCE(o.day, n.day) AS day "
            f"FROM {live.t('days')} o FULL OUTER JOIN {self.t('days')} n "
            f"ON o.emitter = n.emitter AND o.day = n.day WHERE o.day IS NULL OR n.day IS NULL "
            + "".join(f"OR o.{c} <> n.{c} " for c in COUNTS)
        )
        return [{"emitter": r["emitter"], "day": r["day"]} for r in rows]


class IdentityReads:
    """Reads of the live identities view, through the projection service's runner and store."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def _view(self) -> ActivityProjection:
        projection = self.service.runner.projection(self.service.runner.live("activity"))
        assert isinstance(projection, ActivityProjection)
        return projection

    def keys(
        self,
        *,
        now: datetime,
        last_uses: dict[str, datetime],
        stale_days: int | None = None,
        emitter_id: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """Keys in order of creation, never their secret. Stale: not revoked, not expired,
        and neither used nor created in the last `stale_days` days."""
        view = self._view()
        where, params = ["1 = 1"], list[Any]()
        if emitter_id is not None:
            where.append("emitter_id = ?")
            params.append(emitter_id)
        if stale_days is not None:
            cutoff = stamp(now - timedelta(days=stale_days))
            where.append("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)")
            where.append("COALESCE(last_used_at, created_at) < ?")
            params += [stamp(now), cutoff]
        after = decode_cursor(cursor, str, str)
        if after is not None:
            where.append("(created_at > ? OR (created_at = ? AND key_id > ?))")
            params += [after[0], after[0], after[1]]
        with self.service.store.read() as cur:
            rows = cur.all(
                f"SELECT * FROM {view.t('keys')} WHERE {' AND '.join(where)} "
                "ORDER BY created_at, key_id LIMIT ?",
                [*params, limit + 1],
            )
        page = rows[:limit]
        next_cursor = (
            encode_cursor(page[-1]["created_at"], page[-1]["key_id"]) if len(rows) > limit else None
        )
        items = [self._key_item(r, last_uses.get(r["key_id"]), now) for r in page]
        if stale_days is not None:
            cutoff_at = now - timedelta(days=stale_days)
            items = [
                i
                for i in items
                if not (i["last_used_at"] and _parse(i["last_used_at"]) >= cutoff_at)
            ]
        return {"items": items, "next_cursor": next_cursor}

    @staticmethod
    def _key_item(row: dict[str, Any], in_memory: datetime | None, now: datetime) -> dict[str, Any]:
        last = row["last_used_at"]
        if in_memory is not None and (last is None or stamp(in_memory) > last):
            last = stamp(in_memory)
        expires = row["expires_at"]
        status = "active"
        if row["revoked_at"] is not None:
            status = "revoked"
        elif expires is not None and expires <= stamp(now):
            status = "expired"
        return {
            "key_id": row["key_id"],
            "role": row["role"],
            "name": row["name"],
            "emitter_id": row["emitter_id"],
            "created_at": _iso(row["created_at"]),
            "expires_at": _iso(expires),
            "revoked_at": _iso(row["revoked_at"]),
            "last_used_at": _iso(last),
            "replaces": row["replaces"],
            "replaced_by": row["replaced_by"],
            "status": status,
        }

    def emitters(self, *, cursor: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Emitters by id, with their owner and whether they were offboarded."""
        view = self._view()
        after = decode_cursor(cursor, str)
        where, params = ("emitter_id > ?", [after[0]]) if after else ("1 = 1", [])
        with self.service.store.read() as cur:
            rows = cur.all(
                f"SELECT e.*, (SELECT COUNT(*) FROM {view.t('keys')} k WHERE k.emitter_id = "
                f"e.emitter_id AND k.revoked_at IS NULL) AS keys FROM {view.t('emitters')} e "
                f"WHERE {where} ORDER BY emitter_id LIMIT ?",
                [*params, limit + 1],
            )
        page = rows[:limit]
        return {
            "items": [self.emitter_item(r) for r in page],
            "next_cursor": encode_cursor(page[-1]["emitter_id"]) if len(rows) > limit else None,
        }

    @staticmethod
    def emitter_item(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "emitter_id": row["emitter_id"],
            "name": row["name"],
            "owner": row["owner"],
            "registered_at": _iso(row["registered_at"]),
            "offboarded_at": _iso(row["offboarded_at"]),
            "offboard_reason": row["reason"],
            "unrevoked_keys": int(row["keys"]),
        }

    def activity(
        self, emitter_id: str, start: date | None = None, end: date | None = None
    ) -> dict[str, Any]:
        """Per UTC day from `start` to `end` (inclusive): usage accepted, retries, conflicts
        and refusals, and how many customers and meters the accepted usage reached."""
        if start is not None and end is not None:
            if end < start:
                raise InvalidInput("must not be before from", field="to")
            if (end - start).days >= MAX_DAYS:
                raise InvalidInput(f"at most {MAX_DAYS} days at once", field="to")
        view = self._view()
        where, params = ["emitter = ?"], [emitter_id]
        if start is not None:
            where.append("day >= ?")
            params.append(start.isoformat())
        if end is not None:
            where.append("day <= ?")
            params.append(end.isoformat())
        clause = " AND ".join(where)
        with self.service.store.read() as cur:
            rows = cur.all(
                f"SELECT * FROM {view.t('days')} WHERE {clause} ORDER BY day LIMIT ?",
                [*params, MAX_DAYS],
            )
            reached = cur.all(
                f"SELECT day, kind, COUNT(*) AS n FROM {view.t('reached')} WHERE {clause} "
                "GROUP BY day, kind",
                params,
            )
        spread = {(r["day"], r["kind"]): int(r["n"]) for r in reached}
        return {
            "emitter_id": emitter_id,
            "items": [
                {
                    "day": r["day"],
                    **{c: int(r[c]) for c in COUNTS},
                    "customers": spread.get((r["day"], "customer"), 0),
                    "meters": spread.get((r["day"], "meter"), 0),
                }
                for r in rows
            ],
        }


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
