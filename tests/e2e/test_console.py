"""The finance console in a real browser (Debian's Chromium, driven by Playwright) against a
real `billing serve` on each store: finance reads, drill-down that adds up, as-of, an operator's
rebuild, roles, CSRF, sign-in refusals. Screenshots of every page go to /tmp/console-shots/."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api.console.sessions import SessionStore
from projections.store import SQLiteViewStore
from tests.conftest import POSTGRES_URL, STORES, _require_postgres
from tests.e2e.test_e2e_serve import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path("/tmp/console-shots")

sync_api = pytest.importorskip("playwright.sync_api")


def _ensure_chromium() -> None:
    """Debian's Chromium, installed from the distribution when missing (never a download of
    Playwright's own browser builds)."""
    if os.path.exists(CHROMIUM):
        return
    if shutil.which("apt-get") is None:
        pytest.skip("no /usr/bin/chromium and no apt-get to install it")
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        subprocess.run(install, capture_output=True, check=True)


# The service, on each store, with a small data set made through the API ------------------------


@dataclass
class Served:
    store: str
    base: str
    admin: str
    keys: dict[str, str] = field(default_factory=dict)
    invoice_now: str = ""
    invoice_last: str = ""
    before_late: str = ""
    period_now: str = ""
    period_last: str = ""


def _months() -> tuple[datetime, datetime]:
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return this_month, (this_month - timedelta(days=1)).replace(day=1)


def _load(served: Served) -> None:
    this_month, last_month = _months()
    now = datetime.now(UTC)
    with httpx.Client(
        base_url=served.base, timeout=30, headers={"Authorization": f"Bearer {served.admin}"}
    ) as api:

        def ok(response: httpx.Response) -> Any:
            assert response.status_code < 300, response.text
            return response.json()

        for role in ("finance", "operator"):
            served.keys[role] = ok(api.post("/v1/keys", json={"role": role, "name": role}))["key"]
        ok(api.post("/v1/emitters", json={"emitter_id": "gateway", "name": "API gateway"}))
        served.keys["emitter"] = ok(
            api.post("/v1/keys", json={"role": "emitter", "name": "gw", "emitter_id": "gateway"})
        )["key"]
        ok(
            api.post(
                "/v1/plans",
                json={
                    "plan_id": "std",
                    "currency": "USD",
                    "charges": [
                        {"meter": "api_calls", "model": "per_unit", "unit_amount": "0.002"},
                        {
                            "meter": "storage_gb",
                            "aggregation": "max",
                            "model": "per_unit",
                            "unit_amount": "0.25",
                        },
                    ],
                },
            )
        )
        served.period_last, served.period_now = (
            last_month.strftime("%Y-%m"),
            this_month.strftime("%Y-%m"),
        )
        for customer_id, name in (("acme", "Acme Corp"), ("globex", "Globex Inc")):
            ok(api.post("/v1/customers", json={"customer_id": customer_id, "name": name}))
            ok(
                api.put(
                    f"/v1/customers/{customer_id}/subscription",
                    json={"plan_id": "std", "effective_from": served.period_last},
                )
            )
        events = [
            {
                "event_id": f"last-{i}",
                "customer_id": "acme",
                "meter": "api_calls",
                "quantity": "100",
                "occurred_at": (last_month + timedelta(hours=i + 1)).isoformat(),
            }
            for i in range(3)
        ]
        events += [
            {
                "event_id": f"now-{i}",
                "customer_id": customer,
                "meter": "api_calls",
                "quantity": quantity,
                "occurred_at": (now - timedelta(minutes=30 - i)).isoformat(),
            }
            for i, (customer, quantity) in enumerate(
                [("acme", "250"), ("acme", "250"), ("acme", "250.5"), ("globex", "7")]
            )
        ]
        events.append(
            {
                "event_id": "disk-1",
                "customer_id": "acme",
                "meter": "storage_gb",
                "quantity": "12",
                "occurred_at": (now - timedelta(minutes=5)).isoformat(),
            }
        )
        results = ok(api.post("/v1/usage/batch", json={"events": events}))["results"]
        assert {r["status"] for r in results} == {"accepted"}
        closed = api.post(
            f"/v1/customers/acme/periods/{served.period_last}/close",
            headers={"Authorization": f"Bearer {served.keys['operator']}"},
        )
        served.invoice_last = ok(closed)["invoice_id"]
        listed = ok(api.get("/v1/invoices", params={"customer_id": "acme"}))["items"]
        served.invoice_now = next(i for i in listed if i["period"] == served.period_now)[
            "invoice_id"
        ]
        time.sleep(0.05)
        served.before_late = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        time.sleep(0.05)
        late = {
            "event_id": "late-1",
            "customer_id": "acme",
            "meter": "api_calls",
            "quantity": "500",
            "occurred_at": (last_month + timedelta(days=3)).isoformat(),
        }
        assert ok(api.post("/v1/usage", json=late))["treatment"] == "carried_forward"


@pytest.fixture(scope="module", params=STORES)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    store = str(request.param)
    schema = None
    if store == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('console')}/billing.db"
    else:
        _require_postgres()
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={schema}"
    admin = secrets.token_urlsafe(24)
    port = free_port()
    env = {**os.environ, "BILLING_DATABASE_URL": url, "BILLING_ADMIN_KEY": admin}
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Served(store, f"http://127.0.0.1:{port}", admin)
    try:
        wait_healthy(served.base, server)
        _load(served)
        yield served
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        output = server.stdout.read() if server.stdout else ""
        if schema is not None:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        assert "Traceback" not in output, output[-4000:]
        for key in served.keys.values():
            assert key not in output


# The browser -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _ensure_chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Person:
    """One browser context (its own cookies), failing the test on any JavaScript error."""

    def __init__(self, browser: Any, served: Served) -> None:
        self.served = served
        self.context = browser.new_context(base_url=served.base)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{self.served.store}-{name}.png"), full_page=True)

    def sign_in(self, key: str) -> None:
        self.page.goto("/login")
        self.page.fill("#key", key)
        self.page.click("button[type=submit]")

    def csrf(self) -> str:
        return str(
            self.page.get_attribute("form[action='/logout'] input[name=csrf_token]", "value")
        )

    def forgive(self, status: int) -> None:
        """Chromium logs an error page's status as a console error: one the test asked for."""
        expected = f"the server responded with a status of {status}"
        assert any(expected in e for e in self.errors), self.errors
        self.errors = [e for e in self.errors if expected not in e]

    def post(self, url: str, form: dict[str, str] | None = None) -> httpx.Response:
        """A POST with this person's session cookie, outside the page (as a script would)."""
        cookies = {c["name"]: c["value"] for c in self.context.cookies()}
        return httpx.post(f"{self.served.base}{url}", data=form or {}, cookies=cookies)

    def get(self, url: str) -> httpx.Response:
        """A GET with this person's session cookie, outside the page."""
        cookies = {c["name"]: c["value"] for c in self.context.cookies()}
        return httpx.get(f"{self.served.base}{url}", cookies=cookies)

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors


@pytest.fixture
def person(browser: Any, served: Served) -> Iterator[Any]:
    people: list[Person] = []

    def make() -> Person:
        people.append(Person(browser, served))
        return people[-1]

    yield make
    for p in people:
        p.close()


def _sum(texts: list[str]) -> Decimal:
    return sum((Decimal(t.strip()) for t in texts), Decimal(0))


# Scenarios -------------------------------------------------------------------------------------


def test_finance_reads_a_customer_an_invoice_and_a_line_whose_records_add_up(served, person):
    finance = person()
    page = finance.page
    page.goto("/login")
    finance.shot("login")
    finance.sign_in(served.keys["finance"])
    page.wait_for_selector("#overview")
    assert page.locator("#overview tbody tr").count() == 2
    finance.shot("overview")
    page.fill("#q", "glob")
    sync_api.expect(page.locator("#overview tbody tr")).to_have_count(1)
    assert "globex" in page.inner_text("#overview tbody")

    page.goto("/customers/acme")
    assert "Acme Corp" in page.inner_text("h1")
    assert "std v1" in page.inner_text(".facts")
    balances = page.inner_text("#balances")
    assert "750.5" in balances and "12" in balances
    finance.shot("customer")

    page.click(f"a[href^='/invoices/{served.invoice_now}']")
    page.wait_for_selector("#lines")
    lines = page.locator("#lines tbody tr[id^=line-]")
    kinds = [lines.nth(i).locator("td").nth(1).inner_text() for i in range(lines.count())]
    assert kinds == ["usage", "usage", "carried forward"]
    # 750.5 calls at 0.002 (1.501, rounded per line), 12 GB at 0.25, and the late 500 calls
    # carried from last month (800 instead of 300 calls there: 1.00 more)
    assert page.inner_text("#invoice-total") == "5.50 USD"
    page.click("#line-0 button")
    page.wait_for_selector("#records-0 .record-quantity")
    shown = page.locator("#records-0 .record-quantity").all_inner_texts()
    line_quantity = Decimal(page.inner_text("#line-0 .line-quantity"))
    assert _sum(shown) == line_quantity == Decimal("750.5")
    assert Decimal(page.inner_text("#records-0 .all-sum")) == line_quantity
    page.click("#line-2 button")  # the carried-forward line: its late record, from last month
    page.wait_for_selector("#records-2 .record-quantity")
    assert page.locator("#records-2 .record-quantity").all_inner_texts() == ["500"]
    assert "late-1" in page.inner_text("#records-2")
    page.click("#verify")  # finance proves what it reads
    page.wait_for_selector("#verify-outcome")
    assert "Pass" in page.inner_text("#verify-outcome")
    finance.shot("invoice")

    for url, name in (
        ("/invoices", "invoices"),
        ("/reconciliation", "reconciliation"),
        ("/audit", "audit"),
    ):
        page.goto(url)
        page.wait_for_selector("main h1")
        finance.shot(name)
    assert page.locator("#run-form").count() == 0
    nav = page.locator("nav[aria-label=Main] a").all_inner_texts()
    assert nav == ["Overview", "Invoices", "Reconciliation", "Audit", "Identities"]
    # the projections' state is the operators' (GET /v1/projections): a readable 403 page
    page.goto("/projections")
    assert "may not read the projections" in page.inner_text("#error-message")
    assert page.locator("button:has-text('Rebuild')").count() == 0
    finance.shot("projections-refused")
    finance.forgive(403)
    page.goto("/invoices?status=issued")
    assert page.locator("#invoices tbody tr").count() == 1
    with page.expect_download() as download:
        page.click("#csv-link")
    rows = Path(download.value.path()).read_text().splitlines()
    assert rows[0].startswith("invoice_id,customer_id,period,revision,status,total")
    assert [r.split(",")[0] for r in rows[1:]] == [served.invoice_last]

    # a finance key posting an operator action anyway (with a good CSRF token): 403
    token = finance.csrf()
    refused = finance.post("/projections/invoices/rebuild", {"csrf_token": token})
    assert refused.status_code == 403 and "may not rebuild" in refused.text
    refused = finance.post("/reconciliation", {"csrf_token": token, "period": "2026-11"})
    assert refused.status_code == 403 and "may not run reconciliation" in refused.text
    # and without the CSRF token (or with another) nothing is even considered
    r = finance.post("/logout")
    assert r.status_code == 403, (r.headers, r.text[:500])
    assert finance.post("/logout", {"csrf_token": token[::-1]}).status_code == 403
    assert finance.post("/invoices/x/verify").status_code == 403
    page.goto("/invoices")
    page.click("button:has-text('Sign out')")
    page.wait_for_selector("#login-message")
    assert "signed out" in page.inner_text("#login-message")
    page.goto("/invoices")
    assert page.url.startswith(f"{served.base}/login")


def test_as_of_before_a_late_event_shows_the_old_total(served, person):
    finance = person()
    page = finance.page
    finance.sign_in(served.keys["finance"])
    page.wait_for_selector("#overview")
    page.goto(f"/invoices/{served.invoice_now}")
    now_total = page.inner_text("#invoice-total")
    page.goto(f"/invoices/{served.invoice_now}?as_of={served.before_late}")
    assert "Showing what was known at" in page.inner_text("#as-of-banner")
    then_total = page.inner_text("#invoice-total")
    assert Decimal(now_total.split()[0]) - Decimal(then_total.split()[0]) == Decimal("1.00")
    assert page.locator("#lines tbody tr[id^=line-]").count() == 2  # no carried line yet
    finance.shot("invoice-as-of")
    # the picker: a UTC wall time becomes as_of on the same page, and links keep it
    page.goto("/")
    picked = served.before_late[:19]
    page.fill("#as-of-picker", picked)
    page.click(".asof button")
    page.wait_for_selector("#as-of-banner")
    assert f"as_of={picked.replace(':', '%3A')}Z" in page.url
    finance.shot("overview-as-of")
    page.goto("/?as_of=yesterday")
    assert "as_of" in page.inner_text("#error-message")
    finance.forgive(422)


def _chart(page: Any) -> dict[str, Decimal]:
    """What Chart.js drew on the daily usage canvas: per meter, the sum of its points (and the
    canvas was given a size, so it rendered)."""
    page.wait_for_selector("#daily-chart")
    drawn = page.evaluate(
        """() => {
          const canvas = document.getElementById("daily-chart");
          const chart = Chart.getChart(canvas);
          return { width: canvas.width, height: canvas.height, labels: chart.data.labels,
                   sets: chart.data.datasets.map(d => [d.label, d.data]) };
        }"""
    )
    assert drawn["width"] > 0 and drawn["height"] > 0 and len(drawn["labels"]) >= 28
    return {
        label: sum((Decimal(str(v)) for v in data), Decimal(0)) for label, data in drawn["sets"]
    }


def test_daily_usage_charts_from_the_series_read_model(served, person):
    finance = person()
    page = finance.page
    finance.sign_in(served.keys["finance"])
    page.wait_for_selector("#overview")
    overview = _chart(page)
    # this period, every customer together: acme's 750.5 calls and globex's 7; 12 GB at most
    assert overview == {"api_calls": Decimal("757.5"), "storage_gb": Decimal("12")}
    finance.shot("overview-daily-chart")
    page.goto("/customers/acme")
    assert _chart(page) == {"api_calls": Decimal("750.5"), "storage_gb": Decimal("12")}
    finance.shot("customer-daily-chart")
    # last period: 300 calls, then the late 500 (carried forward, charted on its own day)
    page.goto(f"/customers/acme?period={served.period_last}")
    assert _chart(page) == {"api_calls": Decimal("800")}
    page.goto(f"/customers/acme?period={served.period_last}&as_of={served.before_late}")
    assert _chart(page) == {"api_calls": Decimal("300")}
    page.goto(f"/customers/globex?period={served.period_last}")
    assert page.locator("#daily-chart").count() == 0
    assert "No usage recorded" in page.inner_text("#daily-usage")


def test_an_operator_rebuilds_a_projection_and_sees_it_switch(served, person):
    operator = person()
    page = operator.page
    operator.sign_in(served.keys["operator"])
    page.wait_for_selector("#run-form")  # an operator lands on the first page it may open
    assert page.url == f"{served.base}/reconciliation"
    nav = page.locator("nav[aria-label=Main] a").all_inner_texts()
    assert nav == ["Reconciliation", "Projections", "Identities"]
    page.click("nav[aria-label=Main] a:has-text('Projections')")
    page.wait_for_selector("#projections")
    before = page.inner_text("#projections")
    assert re.search(r"invoices\s+1\s+live", before)
    page.click("#rebuild-invoices-button")
    page.wait_for_selector("#version-invoices_v2.state-live", timeout=30_000)
    operator.shot("projections-rebuilt")
    assert "retired" in page.inner_text("#version-invoices_v1")

    # invoices are read by finance and admins only (GET /v1/invoices/{invoice_id})
    page.goto(f"/invoices/{served.invoice_last}")
    assert "may not read invoices" in page.inner_text("#error-message")
    operator.shot("invoice-refused")
    operator.forgive(403)
    for url in ("/", "/audit", "/customers/acme", "/invoices.csv"):
        refused = operator.get(url)
        assert refused.status_code == 403 and "Not allowed" in refused.text, url

    admin = person()  # an admin reads and verifies it, from the rebuilt version
    admin.sign_in(served.admin)
    admin.page.wait_for_selector("#overview")
    admin.page.goto(f"/invoices/{served.invoice_last}")
    admin.page.click("#verify")
    admin.page.wait_for_selector("#verify-outcome")
    assert "Pass" in admin.page.inner_text("#verify-outcome")
    admin.shot("invoice-verified")

    page.goto("/reconciliation")
    page.fill("#r-period", served.period_last)
    page.click("#run-form button")
    page.wait_for_selector("#run-result")
    assert "no differences" in page.inner_text("#run-result")
    assert "300" in page.inner_text("#recon-meters")
    assert page.locator("#runs tbody tr").count() >= 1
    operator.shot("reconciliation-run")


def test_who_may_sign_in_and_for_how_long(served, person):
    visitor = person()
    page = visitor.page
    visitor.sign_in(served.keys["emitter"])
    assert "emitter key" in page.inner_text("#login-message")
    visitor.shot("login-emitter-refused")
    visitor.sign_in("bk_0123456789abcdef_not-a-key")
    assert "not accepted" in page.inner_text("#login-message")
    visitor.forgive(401)
    page.goto("/")
    assert page.url.startswith(f"{served.base}/login")
    # a form posted without the sign-in form's token is refused
    assert visitor.post("/login", {"key": served.admin}).status_code == 403

    # a revoked key ends its sessions at the next request
    with httpx.Client(
        base_url=served.base, headers={"Authorization": f"Bearer {served.admin}"}
    ) as api:
        created = api.post("/v1/keys", json={"role": "finance", "name": "temp"}).json()
        visitor.sign_in(created["key"])
        page.wait_for_selector("#overview")
        assert api.delete(f"/v1/keys/{created['key_id']}").status_code == 200
    page.goto("/invoices")
    assert "no longer valid" in page.inner_text("#login-message")
    cookies = {c["name"]: c for c in visitor.context.cookies()}
    assert "billing_console" not in cookies or not cookies["billing_console"]["value"]


def test_sessions_expire_when_idle_or_old_and_are_bounded(tmp_path):
    now = [0.0]
    views = SQLiteViewStore(str(tmp_path / "billing.db"))
    store = SessionStore(views, idle=60, lifetime=300, limit=2, clock=lambda: now[0])
    first, _ = store.open("k1", "finance", "fin")
    now[0] = 59
    assert store.get(first) is not None
    now[0] = 120
    assert store.get(first) is None  # idle for 61 s
    second, _ = store.open("k2", "finance", "fin")
    for t in range(150, 420, 50):
        now[0] = t
        if t - 120 <= 300:
            assert store.get(second) is not None
    now[0] = 430
    assert store.get(second) is None  # older than its lifetime
    a, _ = store.open("k3", "operator", "op")
    now[0] += 1
    b, _ = store.open("k4", "operator", "op")
    now[0] += 1
    c, _ = store.open("k4", "operator", "op")
    assert store.get(a) is None and len(store) == 2  # the least recently used went first
    assert store.close_key("k4") == 2 and store.get(b) is None and store.get(c) is None
    views.close()
