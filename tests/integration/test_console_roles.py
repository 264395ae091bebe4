"""Console roles: every console page and action allows exactly the roles of the API route whose
data it shows or action it takes (api.console.roles), and each role gets 200 or a readable 403
page from every page, with navigation listing only what it may open. Through the real HTTP
application in-process, on both stores."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from api.console import roles
from api.console.roles import ACCESS, OPEN, OPERATORS
from tests.api_support import ADMIN, event, http, setup_acme

# Requests for every console route: (route name, method, path, form). POSTs carry inputs that
# an allowed role gets refused for another reason (404/422), so nothing heavy runs.
PAGES = [
    ("console:overview", "GET", "/", None),
    ("console:customer", "GET", "/customers/acme", None),
    ("console:invoices", "GET", "/invoices", None),
    ("console:invoices_csv", "GET", "/invoices.csv", None),
    ("console:invoice", "GET", "/invoices/{invoice}", None),
    ("console:lineage", "GET", "/invoices/{invoice}/lines/0", None),
    ("console:reconciliation", "GET", "/reconciliation", None),
    ("console:audit", "GET", "/audit", None),
    ("console:projections", "GET", "/projections", None),
    ("console:identities", "GET", "/identities", None),
    ("console:verify", "POST", "/invoices/no-such-invoice/verify", {}),
    ("console:reconcile", "POST", "/reconciliation", {"period": "not-a-period"}),
    ("console:rebuild", "POST", "/projections/no-such-projection/rebuild", {}),
    ("console:switch", "POST", "/projections/invoices/switch", {"version": "99"}),
    ("console:offboard", "POST", "/identities/emitters/gw/offboard", {"reason": "r"}),
    ("console:rotate", "POST", "/identities/keys/nokey/rotate", {}),
]


def _handlers(app: Litestar) -> list[tuple[str, str, Any]]:
    """(method, path format, handler) of every HTTP route handler of the application."""
    found = []
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                for method in handler.http_methods:
                    found.append((method, route.path_format, handler))
    return found


def _api_roles(app: Litestar, method: str, path: str) -> frozenset[str]:
    for m, p, handler in _handlers(app):
        if m == method and p == path:
            guarded = [g for g in handler.resolve_guards() if hasattr(g, "roles")]
            assert len(guarded) == 1, (method, path)
            return frozenset(guarded[0].roles)
    raise AssertionError(f"no API route {method} {path}")


@pytest.fixture
def served(settings: Any, clock: Any) -> Any:
    with http(settings, clock) as (client, services):
        yield client, services


def test_every_console_route_has_exactly_one_rule_and_each_rule_a_route(served):
    client, _ = served
    names = {h.name for _, _, h in _handlers(client.app) if (h.name or "").startswith("console:")}
    assert names - OPEN == set(ACCESS), "a console route without a rule, or a rule without one"
    assert {name for name, *_ in PAGES} == set(ACCESS)


def test_each_rule_allows_exactly_the_roles_of_the_api_routes_it_reads_or_acts_through(served):
    client, _ = served
    for name, rule in ACCESS.items():
        if not rule.api:  # running a kept reconciliation: the contract's operator row
            assert rule.roles == OPERATORS, name
            continue
        expected = frozenset.intersection(
            *(_api_roles(client.app, *route.split(" ", 1)) for route in rule.api)
        )
        assert rule.roles == expected, (name, sorted(rule.roles), sorted(expected))
    # the table as the contract's roles table reads it
    assert roles.navigation("operator") == [
        ("/reconciliation", "Reconciliation"),
        ("/projections", "Projections"),
        ("/identities", "Identities"),
    ]
    assert [u for u, _ in roles.navigation("finance")] == [
        "/",
        "/invoices",
        "/reconciliation",
        "/audit",
        "/identities",
    ]
    assert len(roles.navigation("admin")) == len(roles.NAVIGATION)
    assert roles.home("operator") == "/reconciliation" and roles.home("finance") == "/"


def _token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def _sign_in(client: TestClient[Any], key: str) -> tuple[str, str]:
    """Sign in; the page it lands on and the session's CSRF token."""
    client.cookies.clear()
    form = client.get("/login")
    landed = client.post(
        "/login", data={"key": key, "csrf_token": _token(form.text)}, follow_redirects=False
    )
    assert landed.status_code == 303, landed.text[:500]
    target = landed.headers["location"]
    page = client.get(target)
    assert page.status_code == 200, page.text[:500]
    return target, _token(page.text)


def test_each_role_opens_exactly_its_pages_and_gets_a_readable_403_elsewhere(served):
    client, _ = served
    setup_acme(client)
    assert client.post("/v1/usage", json=event("r-1", "5"), headers=ADMIN).status_code < 300
    assert (
        client.post("/v1/emitters", json={"emitter_id": "gw", "name": "G"}, headers=ADMIN)
    ).status_code == 201
    invoice = client.get("/v1/invoices?customer_id=acme", headers=ADMIN).json()["items"][0]
    keys = {"admin": "test-admin-key"}
    for role in ("finance", "operator"):
        made = client.post("/v1/keys", json={"role": role, "name": role}, headers=ADMIN)
        keys[role] = made.json()["key"]

    for role, key in keys.items():
        landed, csrf = _sign_in(client, key)
        assert landed == roles.home(role)
        home = client.get(landed).text
        shown = re.findall(r'<nav aria-label="Main">(.*?)</nav>', home, re.S)[0]
        assert re.findall(r'href="([^"?]+)"', shown) == [u for u, _ in roles.navigation(role)]
        for name, method, path, form in PAGES:
            url = path.replace("{invoice}", invoice["invoice_id"])
            if method == "GET":
                answer = client.get(url)
            else:
                answer = client.post(url, data={**(form or {}), "csrf_token": csrf})
            allowed = role in ACCESS[name].roles
            if allowed:
                assert answer.status_code != 403, (role, name, answer.text[:300])
                assert answer.status_code < 500, (role, name, answer.text[:300])
                if method == "GET":
                    assert answer.status_code == 200, (role, name, answer.text[:300])
            else:
                assert answer.status_code == 403, (role, name, answer.status_code)
                assert "Not allowed" in answer.text and "Traceback" not in answer.text
                assert f"may not {ACCESS[name].what}" in unescape(answer.text), (role, name)
                assert f'href="{roles.home(role)}"' in answer.text  # a way back
    # an operator's 403 page is not a data leak: it names no customer or amount
    client.cookies.clear()
    _sign_in(client, keys["operator"])
    refused = client.get("/customers/acme")
    assert refused.status_code == 403 and "acme" not in refused.text
