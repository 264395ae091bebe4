"""Helpers both store adapters use."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from billing_domain.ports import KeyRow


def key_row(r: Any, originator_id: UUID) -> KeyRow:
    return KeyRow(
        r["customer_id"],
        r["kind"],
        r["key"],
        r["payload_hash"],
        originator_id,
        int(r["originator_version"]),
        r["meter"],
        r["quantity"],
    )
