"""Every documented bound on what a caller may send, and the checks that hold them.

Each check looks at the length of its input first and at bounded text only afterwards, so a
refusal costs constant time and memory: no exponent is expanded, no huge value is copied into
an error message. The README's `## Limits` lists the same values (a test keeps them in step).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeGuard

from billing_domain.errors import InvalidInput

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 32
MAX_BATCH_EVENTS = 5000

MAX_ID_LENGTH = 200
MAX_EVENT_ID_LENGTH = 256
MAX_NAME_LENGTH = 200
MAX_UNIT_LENGTH = 64
MAX_REASON_LENGTH = 1000
DISPLAY_FIELDS = {"name": MAX_NAME_LENGTH, "reason": MAX_REASON_LENGTH}
WILDCARD = "*"

MAX_NUMBER_TEXT = 64
MAX_SIGNIFICANT_DIGITS = 38
MAX_INTEGER_DIGITS = 28
MAX_DECIMAL_PLACES = 18

MAX_TIME_TEXT = 40
MAX_FRACTION_DIGITS = 6

MAX_PROPERTIES_ENTRIES = 50
MAX_PROPERTIES_DEPTH = 4
MAX_PROPERTY_KEY_LENGTH = 128
MAX_PROPERTY_STRING_LENGTH = 1024
MAX_PROPERTIES_BYTES = 8 * 1024

_INT_LIMIT = 10**MAX_INTEGER_DIGITS

MAX_PLAN_CHARGES = 100
MAX_PLAN_TIERS = 100
MAX_GRANT_METERS = 100

_PRINTABLE_ASCII_ID = re.compile(r"[!-~]+", re.ASCII)
_PLAIN_ASCII_ID = re.compile(r"[!-.0-\[\]-~]+", re.ASCII)  # printable, no '/' or '\\'
_RESERVED_IDS = frozenset({".", "..", WILDCARD})
_PRINTABLE_ASCII_TEXT = re.compile(r"[ -~]+", re.ASCII)
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(?P<fraction>\.[0-9]+)?(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?",
    re.ASCII,
)
# Unicode categories refused in an identifier: control, format (bidi overrides, zero-width),
# surrogate, private use, unassigned, and every separator (spaces included).
_REFUSED_IN_ID = {"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"}
_REFUSED_IN_TEXT = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


class UnboundedNumber:
    """Stands in for a JSON number whose text is longer than MAX_NUMBER_TEXT: it is never
    converted, and any check that meets it refuses it naming its field."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<number too long>"


def json_number(text: str) -> Decimal | UnboundedNumber:
    """The decoder's hook for JSON numbers with a fraction or exponent: exact, and bounded."""
    if len(text) > MAX_NUMBER_TEXT:
        return UnboundedNumber()
    return Decimal(text)


# Identifiers and display text ------------------------------------------------------------------


def plain_id(value: Any, max_length: int = MAX_ID_LENGTH) -> TypeGuard[str]:
    """Whether `check_id` takes its shortcut for `value` (it then returns it unchanged)."""
    return (
        type(value) is str
        and len(value) <= max_length
        and _PLAIN_ASCII_ID.fullmatch(value) is not None
        and value not in _RESERVED_IDS
    )


def check_id(value: Any, field: str, max_length: int = MAX_ID_LENGTH) -> str:
    """An identifier: 1..max_length printable characters in NFC, no space, no '/' or '\\',
    not '.', '..' or the grant wildcard '*'."""
    if plain_id(value, max_length):
        return value  # the common case; anything else goes through every check
    return check_id_fully(value, field, max_length)


def check_id_fully(value: Any, field: str, max_length: int = MAX_ID_LENGTH) -> str:
    """`check_id` without its shortcut: refuses naming the first bound broken."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("must be a non-empty string", field=field)
    if len(value) > max_length:
        raise InvalidInput(f"must be at most {max_length} characters", field=field)
    if value.isascii():
        if not _PRINTABLE_ASCII_ID.fullmatch(value):
            raise InvalidInput("must not contain spaces or control characters", field=field)
    else:
        if any(unicodedata.category(ch) in _REFUSED_IN_ID for ch in value):
            raise InvalidInput(
                "must not contain spaces, control, format or unassigned characters", field=field
            )
        if not unicodedata.is_normalized("NFC", value):
            raise InvalidInput("must be in Unicode normalisation form NFC", field=field)
    if "/" in value or "\\" in value:
        raise InvalidInput("must not contain '/' or '\\'", field=field)
    if value in (".", ".."):
        raise InvalidInput("must not be '.' or '..'", field=field)
    if value == WILDCARD:
        raise InvalidInput("'*' is reserved for grants to every customer or meter", field=field)
    return value


def check_id_or_wildcard(value: Any, field: str) -> str:
    return value if value == WILDCARD else check_id(value, field)


def check_text(value: Any, field: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """Display text (a name, a reason): spaces allowed, no control or format characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("must be a non-empty string", field=field)
    if len(value) > max_length:
        raise InvalidInput(f"must be at most {max_length} characters", field=field)
    if value.isascii():
        if not _PRINTABLE_ASCII_TEXT.fullmatch(value):
            raise InvalidInput("must not contain control characters", field=field)
    elif any(unicodedata.category(ch) in _REFUSED_IN_TEXT for ch in value):
        raise InvalidInput("must not contain control or format characters", field=field)
    return value


# Quantities and amounts ---------------------------------------------------------------------


def parse_decimal(value: Any, field: str, *, signed: bool = False) -> Decimal:
    """A quantity or amount: plain decimal text (`12.5`, no exponent, sign only if signed) or
    a JSON number; at most MAX_SIGNIFICANT_DIGITS significant digits, below 10^28 in
    magnitude, at most MAX_DECIMAL_PLACES decimal places. Exact: never rounded."""
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_TEXT:
            raise InvalidInput(f"must be at most {MAX_NUMBER_TEXT} characters", field=field)
        if not _DECIMAL_TEXT.fullmatch(value):
            raise InvalidInput(
                "must be plain decimal text: ASCII digits, an optional '.', no spaces, "
                "underscores or exponent",
                field=field,
            )
        _check_plain(value, field)
        number = Decimal(value)
    elif isinstance(value, bool):
        raise InvalidInput("must be a decimal string or number", field=field)
    elif isinstance(value, int):
        if not -(10**MAX_INTEGER_DIGITS) < value < 10**MAX_INTEGER_DIGITS:
            raise InvalidInput(f"must be below 10^{MAX_INTEGER_DIGITS} in magnitude", field=field)
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = bounded_decimal(value, field)
    elif isinstance(value, UnboundedNumber):
        raise InvalidInput(f"must be at most {MAX_NUMBER_TEXT} characters", field=field)
    else:
        raise InvalidInput("must be a decimal string or number", field=field)
    if not signed and number < 0:
        raise InvalidInput("must not be negative", field=field)
    return number


def _check_plain(text: str, field: str) -> None:
    """The bounds on plain decimal text, counted on the text itself."""
    whole, _, fraction = text.lstrip("-").partition(".")
    whole = whole.lstrip("0")
    fraction = fraction.rstrip("0")
    if len(whole) > MAX_INTEGER_DIGITS:
        raise InvalidInput(f"must be below 10^{MAX_INTEGER_DIGITS} in magnitude", field=field)
    if len(fraction) > MAX_DECIMAL_PLACES:
        raise InvalidInput(f"must have at most {MAX_DECIMAL_PLACES} decimal places", field=field)
    significant = len((whole + fraction).strip("0")) if whole else len(fraction.lstrip("0"))
    if significant > MAX_SIGNIFICANT_DIGITS:
        raise InvalidInput(
            f"must have at most {MAX_SIGNIFICANT_DIGITS} significant digits", field=field
        )


def bounded_decimal(number: Decimal, field: str) -> Decimal:
    """The number itself when it is within the bounds, in plain notation (1E+3 is 1000; zero
    in any notation is 0). Never expands an exponent beyond the bounds."""
    _, digits, exponent = number.as_tuple()
    if (
        isinstance(exponent, int)  # finite
        and number  # zero in any notation is written 0 below
        and -MAX_DECIMAL_PLACES <= exponent <= 0
        and len(digits) <= MAX_SIGNIFICANT_DIGITS
        and len(digits) + exponent <= MAX_INTEGER_DIGITS
    ):
        # Already plain and within every bound counted even with its trailing zeros: the
        # common case, decided without writing the number out.
        return number
    return bounded_decimal_fully(number, field)


def bounded_decimal_fully(number: Decimal, field: str) -> Decimal:
    """`bounded_decimal` without its shortcut."""
    if not number.is_finite():
        raise InvalidInput("must be a finite decimal number", field=field)
    if not number:
        return Decimal(0)
    if number.adjusted() >= MAX_INTEGER_DIGITS:
        raise InvalidInput(f"must be below 10^{MAX_INTEGER_DIGITS} in magnitude", field=field)
    if number.adjusted() < -MAX_DECIMAL_PLACES:
        raise InvalidInput(f"must have at most {MAX_DECIMAL_PLACES} decimal places", field=field)
    text = str(number)  # short now: the magnitude is bounded both ways
    if "E" in text:
        # 1E+3: written out (below 10^28 here); 1.5E-7: plain too, for the counting below.
        text = format(number, "f")
        number = Decimal(text)
    if len(text) > MAX_NUMBER_TEXT + MAX_INTEGER_DIGITS:
        raise InvalidInput(
            f"must have at most {MAX_SIGNIFICANT_DIGITS} significant digits", field=field
        )
    _check_plain(text, field)
    return number


def bounded_int(value: Any, field: str, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput("must be an integer", field=field)
    if not minimum <= value < 10**MAX_INTEGER_DIGITS:
        raise InvalidInput(f"must be from {minimum} and below 10^{MAX_INTEGER_DIGITS}", field=field)
    return value


# Times ----------------------------------------------------------------------------------------


def parse_time(value: Any, field: str) -> datetime:
    """An RFC 3339 time with an offset (`2026-11-05T10:00:00Z`, `...T10:00:00.123456+02:00`);
    at most microseconds. No Unix times, no dates alone, no other ISO 8601 forms."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput("needs a UTC offset, e.g. 2026-11-05T10:00:00Z", field=field)
        return value
    if not isinstance(value, str):
        raise InvalidInput(
            "must be an RFC 3339 time string, e.g. 2026-11-05T10:00:00Z", field=field
        )
    if len(value) > MAX_TIME_TEXT:
        raise InvalidInput(f"must be at most {MAX_TIME_TEXT} characters", field=field)
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise InvalidInput("must be an RFC 3339 time, e.g. 2026-11-05T10:00:00Z", field=field)
    if match["offset"] is None:
        raise InvalidInput("needs a UTC offset, e.g. 2026-11-05T10:00:00Z", field=field)
    fraction = match["fraction"]
    if fraction is not None and len(fraction) - 1 > MAX_FRACTION_DIGITS:
        raise InvalidInput(
            f"must have at most {MAX_FRACTION_DIGITS} fractional digits (microseconds)",
            field=field,
        )
    text = value.upper()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput("is not a valid date and time", field=field) from None


# Properties -------------------------------------------------------------------------------------


def check_properties(value: Any, field: str = "properties") -> dict[str, Any]:
    """A usage event's properties: an object of at most MAX_PROPERTIES_ENTRIES keys and list
    items in all, MAX_PROPERTIES_DEPTH levels, keys up to MAX_PROPERTY_KEY_LENGTH characters,
    strings up to MAX_PROPERTY_STRING_LENGTH, numbers as for quantities, no NUL anywhere, and
    at most MAX_PROPERTIES_BYTES of JSON. The walk stops at the first excess."""
    if not isinstance(value, dict):
        raise InvalidInput("must be an object", field=field)
    if not value:
        return value
    entries = 0
    # An upper bound on the JSON size (12 bytes per character covers any escape), so the
    # common small object is never encoded just to be measured.
    worst = 2
    stack: list[tuple[Any, int, str]] = [(value, 1, field)]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_PROPERTIES_DEPTH:
            raise InvalidInput(f"must nest at most {MAX_PROPERTIES_DEPTH} levels", field=where)
        entries += len(node)
        if entries > MAX_PROPERTIES_ENTRIES:
            raise InvalidInput(
                f"must hold at most {MAX_PROPERTIES_ENTRIES} keys and items in all", field=field
            )
        keyed = isinstance(node, dict)
        for key, child in node.items() if keyed else enumerate(node):
            if keyed:
                if not isinstance(key, str) or len(key) > MAX_PROPERTY_KEY_LENGTH or "\x00" in key:
                    raise InvalidInput(
                        f"keys must be at most {MAX_PROPERTY_KEY_LENGTH} characters, no NUL",
                        field=where,
                    )
                worst += 12 * len(key) + 4
            kind = type(child)
            if kind is str:
                if len(child) > MAX_PROPERTY_STRING_LENGTH or "\x00" in child:
                    raise InvalidInput(
                        f"must be at most {MAX_PROPERTY_STRING_LENGTH} characters, no NUL",
                        field=_child(where, key, keyed),
                    )
                worst += 12 * len(child) + 3
            elif kind is int and -_INT_LIMIT < child < _INT_LIMIT:
                worst += MAX_INTEGER_DIGITS + 1
            elif kind is dict or kind is list:
                stack.append((child, depth + 1, _child(where, key, keyed)))
                worst += 3
            elif child is None or kind is bool:
                worst += 6
            elif isinstance(child, int | Decimal | UnboundedNumber):
                parse_decimal(child, _child(where, key, keyed), signed=True)
                worst += MAX_NUMBER_TEXT + 1
            elif kind is float and math.isfinite(child):
                worst += 32
            else:
                raise InvalidInput(
                    "must be JSON: object, list, string, number, boolean or null",
                    field=_child(where, key, keyed),
                )
    if worst > MAX_PROPERTIES_BYTES:
        size = len(json.dumps(value, separators=(",", ":"), default=str).encode())
        if size > MAX_PROPERTIES_BYTES:
            raise InvalidInput(f"must be at most {MAX_PROPERTIES_BYTES} bytes of JSON", field=field)
    return value


def _child(where: str, key: Any, keyed: bool) -> str:
    return f"{where}.{key}" if keyed else f"{where}[{key}]"


def check_decimal_text(text: str) -> bool:
    """True when text would be read as a bounded decimal (used by tests and docs)."""
    try:
        parse_decimal(text, "value", signed=True)
    except (InvalidInput, InvalidOperation):
        return False
    return True
