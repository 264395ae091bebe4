"""Webhook signing secrets, never stored in plaintext: derived from, or sealed with, a master key.

A secret the service generates is `whsec_` + base64 of HMAC-SHA256(master, endpoint id and
rotation): nothing about it is stored, it is derived again when a delivery is signed. A secret
the caller supplies is sealed: encrypted with a keystream of HMAC-SHA256(encryption key, nonce
and block counter) and authenticated with HMAC-SHA256 over the nonce and ciphertext
(encrypt-then-MAC, the two keys derived from the master key), so the event log holds only
ciphertext. The master key's fingerprint is stored beside, so a changed master key is named
instead of signing with a wrong secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from billing_domain.errors import BillingError, InvalidInput

PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # the Standard Webhooks bounds of a signing secret
MAX_SECRET_BYTES = 64
MAX_SECRET_TEXT = 100
SEALED = "v1."
NONCE_BYTES = 16


class SecretUnavailable(BillingError):
    """The master key cannot give this endpoint's secret (not configured, or changed)."""

    code = "webhook_secret_unavailable"


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"\x1f".join(parts), hashlib.sha256).digest()


def check_secret(text: object) -> bytes:
    """A caller's secret: `whsec_` and base64 of 24 to 64 bytes. The value is never echoed."""
    field = "secret"
    if not isinstance(text, str) or len(text) > MAX_SECRET_TEXT or not text.startswith(PREFIX):
        raise InvalidInput(
            f"must be whsec_ followed by base64 of {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes",
            field=field,
        )
    try:
        raw = base64.b64decode(text[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("is not valid base64 after whsec_", field=field) from None
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise InvalidInput(
            f"must decode to {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes", field=field
        )
    return raw


class WebhookKeys:
    """What the master key gives: derived secrets, sealing and unsealing, its fingerprint."""

    def __init__(self, master: bytes) -> None:
        if len(master) < 32:
            raise ValueError("the webhook master key must be at least 32 bytes")
        self._derive = _mac(master, b"webhook-secret")
        self._encrypt = _mac(master, b"webhook-seal-encrypt")
        self._authenticate = _mac(master, b"webhook-seal-mac")
        self.fingerprint = _mac(master, b"webhook-fingerprint").hex()[:16]

    def __repr__(self) -> str:  # never the key
        return f"WebhookKeys(fingerprint={self.fingerprint})"

    def derive(self, endpoint_id: str, rotation: int) -> str:
        raw = _mac(self._derive, endpoint_id.encode(), str(rotation).encode())
        return PREFIX + base64.b64encode(raw).decode()

    def _stream(self, nonce: bytes, length: int) -> bytes:
        blocks = (length + 31) // 32
        return b"".join(
            _mac(self._encrypt, nonce, block.to_bytes(4, "big")) for block in range(blocks)
        )[:length]

    def seal(self, secret: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        plain = secret.encode()
        cipher = bytes(a ^ b for a, b in zip(plain, self._stream(nonce, len(plain)), strict=True))
        tag = _mac(self._authenticate, nonce, cipher)
        return SEALED + base64.urlsafe_b64encode(nonce + cipher + tag).decode()

    def unseal(self, sealed: str) -> str:
        if not sealed.startswith(SEALED):
            raise SecretUnavailable("the sealed secret is of an unknown scheme")
        blob = base64.urlsafe_b64decode(sealed[len(SEALED) :])
        nonce, cipher, tag = blob[:NONCE_BYTES], blob[NONCE_BYTES:-32], blob[-32:]
        if not hmac.compare_digest(tag, _mac(self._authenticate, nonce, cipher)):
            raise SecretUnavailable("the sealed secret does not open with this master key")
        stream = self._stream(nonce, len(cipher))
        return bytes(a ^ b for a, b in zip(cipher, stream, strict=True)).decode()
