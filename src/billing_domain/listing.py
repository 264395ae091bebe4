"""Customers and plans listed from the log, paged by log position.

The pages read the accounts' and plans' first events with the recorder's topic filter
(`select_notifications`), as `customer_ids()` does, and load each listed aggregate for what
it is now (a customer's current name and plan). A page reads at most MAX_SCAN first events:
a filter that matches little answers fewer items with a cursor to go on from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

from eventsourcing.utils import get_topic

from billing_domain.bounds import MAX_NAME_LENGTH, check_id, check_text
from billing_domain.catalogue import CatalogueCommands
from billing_domain.customer import Customer
from billing_domain.errors import InvalidInput
from billing_domain.plan import Plan
from billing_domain.usage import period_of

MAX_SCAN = 10_000
_SCAN_PAGE = 500
T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def position_cursor(cursor: str | None) -> int:
    """A list cursor: the log position the page before ended at."""
    if cursor is None:
        return 0
    if not isinstance(cursor, str) or not cursor.isascii() or not cursor.isdigit():
        raise InvalidInput("must be a next_cursor this list answered", field="cursor")
    if len(cursor) > 19:
        raise InvalidInput("must be a next_cursor this list answered", field="cursor")
    return int(cursor)


def check_limit(limit: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidInput("must be between 1 and 1000", field="limit")
    return limit


class ListingCommands(CatalogueCommands):
    def list_customers(
        self,
        q: str | None = None,
        plan_id: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Customer]:
        """Customers in the order they were opened; `q` matches a part of the id or the
        current name (any case), `plan_id` the plan in force this period."""
        q, plan_id = q or None, plan_id or None  # an empty parameter filters nothing
        needle = check_text(q, "q", MAX_NAME_LENGTH).casefold() if q is not None else None
        if plan_id is not None:
            check_id(plan_id, "plan_id")
        current = period_of(self.clock())

        def matches(customer: Customer) -> bool:
            if needle is not None and not (
                needle in customer.customer_id.casefold() or needle in customer.name.casefold()
            ):
                return False
            if plan_id is not None:
                in_force = customer.plan_for(current)
                return in_force is not None and in_force[0] == plan_id
            return True

        return self._page_of(Customer.Opened, Customer, matches, cursor, limit)

    def list_plans(self, cursor: str | None = None, limit: int = 100) -> Page[Plan]:
        """Plans in the order they were first published."""
        return self._page_of(Plan.Created, Plan, lambda _: True, cursor, limit)

    def plan_versions(
        self, plan_id: str, cursor: str | None = None, limit: int = 100
    ) -> Page[dict[str, Any]]:
        """A plan's published versions in order; unknown is not found."""
        plan = self.get_plan(plan_id)
        after = position_cursor(cursor)
        check_limit(limit)
        chosen = plan.versions[after : after + limit]
        more = after + limit < len(plan.versions)
        return Page(chosen, str(after + limit) if more else None)

    def _page_of(
        self,
        first_event: type[Any],
        kind: type[T],
        matches: Callable[[T], bool],
        cursor: str | None,
        limit: int,
    ) -> Page[T]:
        check_limit(limit)
        start = position_cursor(cursor) + 1
        topic = get_topic(first_event)
        items: list[T] = []
        scanned = 0
        while True:
            page = self.recorder.select_notifications(
                start, min(_SCAN_PAGE, MAX_SCAN - scanned), topics=[topic]
            )
            ids = [(n.id, UUID(str(n.originator_id))) for n in page]
            loaded = self._load_many((i for _, i in ids), copy=False)
            for position, originator_id in ids:
                found = loaded.get(originator_id)
                if isinstance(found, kind) and matches(found):
                    items.append(found)
                    if len(items) == limit:
                        return Page(items, str(position))
            scanned += len(page)
            if len(page) < _SCAN_PAGE:
                return Page(items, None)
            start = page[-1].id + 1
            if scanned >= MAX_SCAN:
                return Page(items, str(page[-1].id))
