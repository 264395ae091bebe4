"""One OS process of the race test: records the shared event ids in its own order."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

from billing_domain.application import BillingApplication
from billing_domain.settings import Settings
from billing_domain.usage import UsageInput


def main(database_url: str, seed: int) -> None:
    app = BillingApplication(
        Settings(database_url=database_url), clock=lambda: datetime(2026, 11, 24, 12, tzinfo=UTC)
    )
    ids = list(range(1000))
    random.Random(seed).shuffle(ids)
    statuses: Counter[str] = Counter()
    for start in range(0, 1000, 50):
        batch = [
            UsageInput(
                f"race-{i}",
                "acme",
                "api_calls",
                Decimal(1),
                datetime(2026, 10, 1 + i % 28, tzinfo=UTC),
            )
            for i in ids[start : start + 50]
        ]
        statuses.update(r.status for r in app.record_usage(batch))
    app.close()
    print(json.dumps(statuses))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
