"""Event-sourced metered billing: aggregates, events, pricing and the application's commands."""

import decimal

# Sums of quantities must not round: 28 significant digits (the default) is not enough for
# exact decimal strings of arbitrary length. Threads copy DefaultContext when they start.
PRECISION = 80
decimal.DefaultContext.prec = PRECISION
decimal.getcontext().prec = PRECISION
