"""The one Decimal precision and zero every amount and quantity is computed with."""

from __future__ import annotations

from decimal import Context, Decimal, localcontext
from typing import Any

# Sums of quantities must not round: 28 significant digits (the default) is not enough for
# exact decimal strings of arbitrary length (quantities and prices hold up to 38 each, so a
# product holds up to 76). Threads copy DefaultContext when they start.
PRECISION = 80
ZERO = Decimal(0)
EXACT = Context(prec=PRECISION)


def exact() -> Any:
    """A context of PRECISION digits for arithmetic that must not round before the end."""
    return localcontext(EXACT)
