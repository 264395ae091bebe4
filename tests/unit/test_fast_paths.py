"""The hot paths' shortcuts (ingest, projections) give exactly what the general code gives.

Each shortcut (canonical JSON of flat properties, plain identifiers, plain decimals) is held
to the general path over generated inputs, including the characters JSON escapes and the
identifiers and numbers the bounds refuse."""

from __future__ import annotations

import json
from datetime import UTC
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.stored_json import UndecodableState, decode_state, decode_state_fully
from api.http import schemas
from api.http.usage import _usage_input, usage_item
from billing_domain import bounds
from billing_domain.errors import InvalidInput
from billing_domain.usage import _part, canonical_json
from projections.base import dumps, peaks_text, stamp

TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))
    | st.sampled_from('"\\/\x00\x7f'),
    max_size=12,
)
FLAT = st.dictionaries(TEXT, TEXT, max_size=20)
NESTED = st.dictionaries(
    TEXT, st.one_of(TEXT, st.integers(), st.lists(TEXT, max_size=3)), max_size=5
)


@given(FLAT)
def test_flat_properties_hash_as_the_json_encoder_writes_them(properties: dict[str, str]) -> None:
    expected = json.dumps(properties, sort_keys=True, separators=(",", ":"), default=str)
    assert _part(properties) == expected == canonical_json(properties)


@given(NESTED)
def test_other_properties_take_the_encoder(properties: dict[str, Any]) -> None:
    assert _part(properties) == json.dumps(
        properties, sort_keys=True, separators=(",", ":"), default=str
    )


def test_flat_shortcut_output_for_a_typical_object() -> None:
    assert _part({"region": "eu", "a/b": "x y"}) == '{"a/b":"x y","region":"eu"}'
    assert _part({"q": 'say "hi"'}) == '{"q":"say \\"hi\\""}'
    assert _part({}) == "{}"


def _outcome(check: Any, *args: Any) -> Any:
    try:
        result = check(*args)
    except InvalidInput as error:
        return ("refused", error.field, error.reason)
    return (result, result.as_tuple()) if isinstance(result, Decimal) else result


IDS = st.one_of(
    st.text(max_size=10),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=10),
    st.sampled_from([".", "..", "*", "a/b", "a\\b", "", "x" * 9, "ok-id_1.2", "é", "e\u0301"]),
    st.integers(),
    st.none(),
)


@given(IDS)
def test_identifier_shortcut_decides_as_the_full_check(value: Any) -> None:
    assert _outcome(bounds.check_id, value, "meter", 8) == _outcome(
        bounds.check_id_fully, value, "meter", 8
    )


NUMBERS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=20),
    st.builds(
        lambda digits, exponent, negative: Decimal(f"{'-' if negative else ''}{digits}E{exponent}"),
        st.integers(min_value=0, max_value=10**45),
        st.integers(min_value=-25, max_value=30),
        st.booleans(),
    ),
)


@given(NUMBERS)
def test_decimal_shortcut_decides_as_the_full_check(number: Decimal) -> None:
    assert _outcome(bounds.bounded_decimal, number, "quantity") == _outcome(
        bounds.bounded_decimal_fully, number, "quantity"
    )


@pytest.mark.parametrize(
    "text",
    ["1.5", "0.000000000000000001", "9" * 28, "1" + "0" * 28, "1." + "0" * 19, "-2.50", "0E+5"],
)
def test_decimal_shortcut_edges(text: str) -> None:
    number = Decimal(text)
    assert _outcome(bounds.bounded_decimal, number, "quantity") == _outcome(
        bounds.bounded_decimal_fully, number, "quantity"
    )


TYPED_VALUES = st.one_of(
    st.builds(
        lambda d: {"_type_": "datetime_iso", "_data_": d.isoformat()},
        st.datetimes(timezones=st.just(UTC)),
    ),
    st.builds(lambda n: {"_type_": "decimal_str", "_data_": str(n)}, st.decimals(allow_nan=False)),
    st.builds(lambda u: {"_type_": "uuid_hex", "_data_": u.hex}, st.uuids()),
    st.just({"_type_": "unknown_kind", "_data_": "x"}),
    st.just({"_type_": "decimal_str", "other": "x"}),
)
STATE_VALUES = st.recursive(
    st.one_of(TEXT, st.integers(), st.none(), TYPED_VALUES, st.just("_type_")),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def _decoded(decode: Any, state: bytes) -> Any:
    try:
        return decode(state)
    except UndecodableState as error:
        return ("undecodable", str(error))


@given(
    st.one_of(st.dictionaries(TEXT, STATE_VALUES, max_size=6), STATE_VALUES),
    st.booleans(),
)
def test_stored_states_decode_as_the_general_decoder_does(value: Any, ascii_only: bool) -> None:
    state = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert _decoded(decode_state, state) == _decoded(decode_state_fully, state)


def test_a_usage_state_takes_the_shortcut_and_escapes_do_not() -> None:
    state = (
        b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-25T20:46:37+00:00"},'
        b'"records":[["e1","c1","api_calls","5","2026-11-01T01:23:22Z",{}]]}'
    )
    assert decode_state(state)["timestamp"].year == 2026
    escaped = b'{"t":{"\\u005ftype_":"decimal_str","_data_":"1.5"}}'
    assert decode_state(escaped) == decode_state_fully(escaped) == {"t": Decimal("1.5")}
    assert _decoded(decode_state, b"[1]") == _decoded(decode_state_fully, b"[1]")
    assert _decoded(decode_state, b"{nope") == _decoded(decode_state_fully, b"{nope")


ITEM_IDS = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True),
    TEXT,
    st.sampled_from([".", "..", "*", "a/b", "x" * 300, ""]),
    st.integers(),
    st.none(),
)
ITEM_QUANTITIES = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.integers(min_value=-5, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e5", "0x1", " 1", "1_0", "-0", "", "NaN"]),
    st.none(),
)
ITEM_TIMES = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["2026-11-05", "2026-11-05T10:00:00+02:00", "1762336800", "", "T"]),
    st.integers(),
)
ITEMS = st.fixed_dictionaries(
    {
        "event_id": ITEM_IDS,
        "customer_id": ITEM_IDS,
        "meter": ITEM_IDS,
        "quantity": ITEM_QUANTITIES,
        "occurred_at": ITEM_TIMES,
    },
    optional={
        "properties": st.one_of(NESTED, st.lists(TEXT, max_size=2), TEXT, st.none()),
        "extra": TEXT,
    },
)


def _validated(raw: Any) -> Any:
    try:
        model = _usage_input(schemas.UsageIn.model_validate(raw))
    except ValidationError as error:
        model = ("refused", json.dumps(error.errors(include_url=False), default=str))
    try:
        fast = usage_item(raw)
    except ValidationError as error:
        fast = ("refused", json.dumps(error.errors(include_url=False), default=str))
    return fast, model


@given(st.one_of(ITEMS, st.dictionaries(TEXT, TEXT, max_size=3), TEXT, st.none()))
def test_batch_items_validate_as_the_usage_model_does(raw: Any) -> None:
    fast, model = _validated(raw)
    assert fast == model
    if not isinstance(model, tuple) or model[0] != "refused":
        assert fast.quantity.as_tuple() == model.quantity.as_tuple()  # digits, exponent
        assert fast.occurred_at.tzinfo == model.occurred_at.tzinfo


def test_a_typical_batch_item_skips_the_model_and_a_bad_one_names_its_field() -> None:
    fast, model = _validated(
        {
            "event_id": "req-1",
            "customer_id": "acme",
            "meter": "api_calls",
            "quantity": "12.50",
            "occurred_at": "2026-11-05T10:00:00Z",
        }
    )
    assert fast == model and str(fast.quantity) == "12.50" and fast.properties == {}
    fast, model = _validated(
        {
            "event_id": "req-1",
            "customer_id": "acme",
            "meter": "api_calls",
            "quantity": "1e5",
            "occurred_at": "2026-11-05T10:00:00Z",
        }
    )
    assert fast == model and fast[0] == "refused" and '"quantity"' in fast[1]


@given(st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), max_size=40))
def test_a_lineage_range_is_written_as_the_json_encoder_writes_it(peaks: list[str]) -> None:
    assert peaks_text(peaks) == dumps(peaks)
    assert json.loads(peaks_text(peaks)) == peaks


@given(st.datetimes(timezones=st.just(UTC)))
def test_a_receipt_time_in_text_stamps_as_the_time_itself(moment: Any) -> None:
    text = moment.isoformat().replace("+00:00", "Z")
    assert stamp(text) == stamp(moment) == stamp(text)  # the second from the cache
