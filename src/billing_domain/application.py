"""The billing application: every command the interfaces call, as business verbs.

One event store serves every use case; each use case's commands are in a module of its own
(`ingest`, `corrections`, `catalogue`, `meters`, `listing`, `closing`, `access`,
`webhooks`), combined here.
"""

from __future__ import annotations

from billing_domain.access import AccessCommands
from billing_domain.catalogue import CatalogueCommands
from billing_domain.closing import PeriodCommands
from billing_domain.core import check_identifier, check_period, period_start
from billing_domain.corrections import CorrectionCommands
from billing_domain.external_ids import ExternalIdCommands
from billing_domain.ingest import IngestCommands
from billing_domain.listing import ListingCommands
from billing_domain.meters import MeterCommands
from billing_domain.period import BillingPeriod
from billing_domain.stream_sessions import StreamSessionCommands
from billing_domain.webhooks import WebhookCommands

__all__ = ["BillingApplication", "check_identifier", "check_period", "period_start"]


class BillingApplication(
    IngestCommands,
    CorrectionCommands,
    ListingCommands,
    CatalogueCommands,
    MeterCommands,
    PeriodCommands,
    ExternalIdCommands,
    StreamSessionCommands,
    WebhookCommands,
    AccessCommands,
):
    name = "billing"
    snapshotting_intervals = {BillingPeriod: 200}  # noqa: RUF012
