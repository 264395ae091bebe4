"""Client dialects: the ingest calls of the systems users leave (Stripe, Lago, OpenMeter),
each answered in that system's shape and recorded through the same ingest as /v1/usage."""

from __future__ import annotations

from api.compat import lago, openmeter, stripe

COMPAT_ROUTES = [stripe.ROUTER, lago.ROUTER, openmeter.ROUTER]
