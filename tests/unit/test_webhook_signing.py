"""Webhook secrets and signatures without a database: what a receiver's library accepts, what the
log may hold, and how long a failing delivery waits."""

from __future__ import annotations

import base64
import random

import pytest
from standardwebhooks import Webhook

from billing_domain.errors import InvalidInput
from billing_domain.webhook_secrets import SecretUnavailable, WebhookKeys, check_secret
from billing_domain.webhooks import check_event_types, check_url
from projections.webhook_delivery import DeliverySettings, backoff, sign

MASTER = b"m" * 32


def test_a_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = WebhookKeys(MASTER).derive("wh_" + "a" * 24, 0)
    body = b'{"type":"invoice.issued","data":{"total":"13.00"}}'
    timestamp = int(__import__("time").time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "msg_1", timestamp, body),
    }
    assert Webhook(secret).verify(body, headers)["data"]["total"] == "13.00"
    tampered = body.replace(b"13.00", b"31.00")
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(secret).verify(tampered, headers)


def test_derived_secrets_differ_by_endpoint_rotation_and_master_key() -> None:
    keys = WebhookKeys(MASTER)
    one = keys.derive("wh_1", 0)
    assert one == keys.derive("wh_1", 0)
    assert len({one, keys.derive("wh_2", 0), keys.derive("wh_1", 1)}) == 3
    assert WebhookKeys(b"n" * 32).derive("wh_1", 0) != one
    assert len(base64.b64decode(one.removeprefix("whsec_"))) == 32
    assert "m" * 32 not in repr(keys)


def test_a_sealed_secret_opens_only_with_its_master_key() -> None:
    secret = "whsec_" + base64.b64encode(b"s" * 24).decode()
    sealed = WebhookKeys(MASTER).seal(secret)
    assert secret not in sealed and secret[6:] not in sealed
    assert WebhookKeys(MASTER).unseal(sealed) == secret
    assert WebhookKeys(MASTER).seal(secret) != sealed  # a fresh nonce each time
    with pytest.raises(SecretUnavailable):
        WebhookKeys(b"n" * 32).unseal(sealed)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not-a-secret-value", "whsec_"),
        ("whsec_!!!", "base64"),
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "24 to 64"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64"),
    ],
)
def test_a_supplied_secret_out_of_bounds_is_refused_without_echoing_it(
    text: str, reason: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_secret(text)
    assert refused.value.field == "secret" and reason in refused.value.reason
    assert text not in refused.value.reason and text[6:] not in refused.value.reason


def test_urls_and_event_types_are_bounded() -> None:
    assert check_url("https://erp.example.com:8443/hooks?x=1") == (
        "https://erp.example.com:8443/hooks?x=1"
    )
    for bad in ("", "ftp://a/", "http:///x", "http://a b/", "http://u@a/", "http://a:99999/"):
        with pytest.raises(InvalidInput):
            check_url(bad)
    assert check_event_types(["usage.late", "usage.late", "invoice.issued"]) == [
        "usage.late",
        "invoice.issued",
    ]
    with pytest.raises(InvalidInput) as refused:
        check_event_types(["usage.late", "invoice.voided"])
    assert refused.value.field == "events[1]" and "invoice.voided" in refused.value.reason


def test_backoff_grows_with_full_jitter_above_its_floor_and_covers_a_day() -> None:
    settings = DeliverySettings()  # base 5 s, cap 1 h, give up after 24 h
    rng = random.Random(7)
    waits = [backoff(n, settings, rng) for n in range(1, 60)]
    assert all(settings.backoff_base <= w <= settings.backoff_max for w in waits)
    windows = [min(3600, 5 * 2 ** (n - 1)) for n in range(1, 60)]
    assert all(w <= max(5, window) for w, window in zip(waits, windows, strict=True))
    assert sum(waits[10:20]) > 10 * sum(waits[:5]) / 5  # later waits are longer
    # Attempts until the 24 h window closes: expected waits average half the 1 h cap.
    elapsed, attempts = 0.0, 0
    while elapsed < settings.give_up_after:
        attempts += 1
        elapsed += backoff(attempts, settings, rng)
    assert 30 <= attempts <= 80
