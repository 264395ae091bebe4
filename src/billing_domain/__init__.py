"""Event-sourced metered billing: aggregates, events, pricing and the application's commands."""

import decimal

from billing_domain.numbers import PRECISION

decimal.DefaultContext.prec = PRECISION
decimal.getcontext().prec = PRECISION
