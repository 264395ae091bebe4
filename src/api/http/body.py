"""Request bodies read exactly: JSON numbers become Decimal, never float, so quantities stay
exact from the edge. A body nesting deeper than MAX_JSON_DEPTH, or repeating a key in one
object, is refused."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import State
from litestar.exceptions import ClientException

from billing_domain import bounds
from billing_domain.errors import InvalidInput

_decoder = msgspec.json.Decoder(float_hook=bounds.json_number)
_SPACE_BEFORE_COLON = re.compile(rb'"\s+:')
_CONTAINERS = (dict, list)  # what the decoder builds for objects and arrays


class ExactRequest(Request[Any, Any, State]):
    async def json(self) -> Any:
        body = await self.body()
        return decode_body(body or b"null")


def decode_body(body: bytes) -> Any:
    try:
        decoded = _decoder.decode(body)
    except RecursionError:
        raise _too_deep() from None
    except msgspec.DecodeError as error:
        raise ClientException(f"malformed JSON: {error}") from None
    keys = _count_keys(decoded)
    # A key is a string followed by a colon; a quote inside a string is escaped, so counting
    # '":' counts the keys exactly unless the body has '\":' or space before a colon.
    exact = body.find(b'\\":') < 0 and _SPACE_BEFORE_COLON.search(body) is None
    if not exact or body.count(b'":') != keys:
        _refuse_duplicate_keys(body)
    return decoded


def _too_deep() -> InvalidInput:
    return InvalidInput(f"must nest at most {bounds.MAX_JSON_DEPTH} levels", field="body")


def _count_keys(root: Any) -> int:
    """Keys in every object of a decoded body, walked level by level (no recursion); refuses
    a body nesting deeper than MAX_JSON_DEPTH."""
    keys = 0
    level = [root] if type(root) in _CONTAINERS else []
    depth = 1
    while level:
        if depth > bounds.MAX_JSON_DEPTH:
            raise _too_deep()
        below: list[Any] = []
        for node in level:
            if type(node) is dict:
                keys += len(node)
                below += [child for child in node.values() if type(child) in _CONTAINERS]
            else:
                below += [child for child in node if type(child) in _CONTAINERS]
        level = below
        depth += 1
    return keys


def _refuse_duplicate_keys(body: bytes) -> None:
    """The exact check, for the rare body the count cannot vouch for (depth already bounded)."""

    def pairs(items: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                shown = key if len(key) <= bounds.MAX_PROPERTY_KEY_LENGTH else key[:64] + "..."
                raise InvalidInput("appears twice in one object", field=shown)
            seen.add(key)

    json.loads(body, object_pairs_hook=pairs, parse_float=len, parse_int=len, parse_constant=len)
