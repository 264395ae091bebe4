"""Processes racing the same event ids, and starting together on an empty store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.scenario import customer, line

ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_racing_the_same_1000_ids_count_each_once(app, database_url):
    customer(app)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.race_worker", database_url, str(seed)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    totals: Counter[str] = Counter()
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err[-2000:]
        totals.update(json.loads(out.strip().splitlines()[-1]))
    assert totals == {"accepted": 1000, "duplicate": 1000}
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "1000"
    keys = app.recorder.select_keys("usage", [("acme", f"race-{i}") for i in range(1000)])
    assert len(keys) == 1000


def test_processes_starting_together_on_an_empty_store_all_start(database_url):
    # Each process imports first, then waits for the same instant, so the table creation
    # (events, keys, snapshots) of all of them overlaps.
    code = (
        "import sys, time; from billing_domain.application import BillingApplication; "
        "from billing_domain.settings import Settings; "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); "
        "BillingApplication(Settings(database_url=sys.argv[1])).close(); print('started')"
    )
    at = str(time.time() + 3.0)
    starting = [
        subprocess.Popen(
            [sys.executable, "-c", code, database_url, at],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    for process in starting:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        assert out.strip() == "started"
