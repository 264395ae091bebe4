"""The master key webhook secrets are derived from and sealed with (billing_domain.webhook_secrets).

Where it comes from, first found:
- `BILLING_SECRET_KEY` (at least 32 characters): the key lives outside the store, so a copy of
  the database alone yields no webhook secret. Recommended for production.
- SQLite: a file beside the database (`billing.db` -> `billing.secret`, mode 0600), written
  once by the first process that needs it.
- PostgreSQL: a row of `billing_master_key` in the service's schema, written once.
- The in-memory store: random per process.

Losing or changing it changes every derived secret: the delivery worker then refuses to sign
(the delivery's last error names it) and the endpoints must be registered again.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from billing_domain.settings import Settings, SettingsError
from projections.store import ViewStore

ENV = "BILLING_SECRET_KEY"
MIN_LENGTH = 32
TABLE = "billing_master_key"


def load_master_key(
    settings: Settings, store: ViewStore, environ: Mapping[str, str] | None = None
) -> bytes:
    env = os.environ if environ is None else environ
    text = env.get(ENV, "")
    if text:
        if len(text) < MIN_LENGTH:
            raise SettingsError(
                f"{ENV}: must be at least {MIN_LENGTH} characters (e.g. the output of "
                f"`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or unset"
            )
        return text.encode()
    if settings.is_postgres:
        return _from_table(store)
    path = settings.eventsourcing_env().get("SQLITE_DBNAME", "")
    if not path or path.startswith("file:"):
        return secrets.token_bytes(32)
    return _from_file(Path(path).with_suffix(".secret"))


def _from_file(path: Path) -> bytes:
    if not path.exists():
        staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        try:
            os.link(staged, path)  # fails if another process wrote it first: theirs stands
        except FileExistsError:
            pass
        finally:
            staged.unlink()
    return base64.b64decode(path.read_text().strip())


def _from_table(store: ViewStore) -> bytes:
    with store.write() as cur:
        cur.lock_ddl()
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, key TEXT NOT NULL)"
        )
        cur.execute(
            f"INSERT INTO {TABLE} (id, key) VALUES (1, ?) ON CONFLICT DO NOTHING",
            [base64.b64encode(secrets.token_bytes(32)).decode()],
        )
        row = cur.one(f"SELECT key FROM {TABLE} WHERE id = 1")
    assert row is not None
    return base64.b64decode(str(row["key"]))
