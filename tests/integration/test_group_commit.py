"""Concurrent single-event requests share commits and are each recorded exactly once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from api.http.group_commit import GroupCommitter
from billing_domain.identity import SYSTEM
from tests.scenario import at, customer, line, usage


def test_concurrent_single_events_share_commits_and_bill_once(app):
    customer(app)
    committer = GroupCommitter(app)
    events = [usage(f"single-{i}", 2, at(1 + i % 28)) for i in range(400)]
    retried = events[:50]
    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(lambda e: committer.record(e, SYSTEM), events + retried))
    finally:
        committer.close()
    statuses = [r.status for r in results]
    assert statuses.count("accepted") == 400
    assert statuses.count("duplicate") == 50
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "800"
    assert committer.events == 450
    assert committer.commits < 450  # requests really shared commits


def test_a_bad_event_in_a_group_does_not_fail_its_neighbours(app):
    customer(app)
    committer = GroupCommitter(app)
    try:
        good = committer.submit(usage("good", 1, at(3)), SYSTEM)
        bad = committer.submit(usage("bad", -5, at(3)), SYSTEM)
        assert good.result(10).status == "accepted"
        refused = bad.result(10)
        assert (refused.status, refused.field) == ("rejected", "quantity")
    finally:
        committer.close()
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "1"
