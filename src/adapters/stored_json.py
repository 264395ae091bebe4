"""The stored events' state as this application's JSON transcoder writes it, decoded from the
bytes alone (the reconciliation's raw view, independent of the library's mapper)."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID


class UndecodableState(ValueError):
    """A stored event's state is not the JSON this application writes."""


def _hook(value: dict[str, Any]) -> Any:
    kind = value.get("_type_")
    if kind is None or "_data_" not in value or len(value) != 2:
        return value
    data = value["_data_"]
    if kind == "decimal_str":
        return Decimal(data)
    if kind == "datetime_iso":
        return datetime.fromisoformat(data)
    if kind == "uuid_hex":
        return UUID(data)
    raise UndecodableState(f"unknown encoded type {kind!r}")


TYPED = b'"_type_"'


def decode_state(state: bytes) -> dict[str, Any]:
    """The attributes of a stored event, from its bytes alone: `decode_state_fully`'s answer,
    faster for the common state whose encoded values (a `timestamp`, say) are all at the top
    level. The bytes say how many there are (a key `_type_` is never escaped by the encoder;
    a state with any escape takes the general path)."""
    typed = state.count(TYPED)
    if typed > 2 or b"\\u" in state:
        return decode_state_fully(state)
    try:
        decoded = json.loads(state)
    except (ValueError, TypeError):
        return decode_state_fully(state)
    if type(decoded) is not dict:
        return decode_state_fully(state)
    if typed:
        for name, value in decoded.items():
            if type(value) is dict and len(value) == 2 and "_type_" in value:
                try:
                    decoded[name] = _hook(value)
                except (ValueError, TypeError, ArithmeticError):
                    return decode_state_fully(state)  # which says why, as it always has
                typed -= 1
        if typed:  # one inside a list or a nested object, or not a key at all
            return decode_state_fully(state)
    return decoded


def decode_state_fully(state: bytes) -> dict[str, Any]:
    """The attributes of a stored event, from its bytes alone."""
    try:
        decoded = json.loads(state, object_hook=_hook)
    except (ValueError, TypeError, ArithmeticError) as error:
        raise UndecodableState(f"state is not valid JSON: {error}") from None
    if not isinstance(decoded, dict):
        raise UndecodableState("state is not a JSON object")
    return decoded


def domain_event(cls: type, state: dict[str, Any], originator_id: Any, version: int) -> Any:
    """The event of class `cls` that a decoded state describes, upcast to the class's version
    as the library's mapper does, without its transcoder. Takes `state` over: pass a copy
    to keep it."""
    state["originator_id"] = (
        originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))
    )
    state["originator_version"] = version
    class_version = getattr(cls, "class_version", 1)
    from_version = state.pop("class_version", 1)
    while from_version < class_version:
        getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
        from_version += 1
    event: Any = object.__new__(cls)
    object.__setattr__(event, "__dict__", state)
    return event
