"""Who may open each console page and take each console action: the one place that says it.

Every page and action allows exactly the roles of the HTTP API route whose data it shows or
whose action it takes (`requires(...)` in `api.http`); `tests/integration/test_console_roles.py`
compares this table with the API's own guards and calls every page with every role. One
action has no API route of its own and follows the contract's roles table, where operators
"reconcile": running a reconciliation that the console keeps. "Verify now" on an invoice
reads the invoice and reconciles its customer's period without keeping a run, as
`GET /v1/invoices/{invoice_id}` and `GET /v1/reconciliation` do: those who read the invoice
(finance, admin) can prove it from there.
"""

from __future__ import annotations

from dataclasses import dataclass

ADMIN = frozenset({"admin"})
READERS = frozenset({"admin", "finance"})  # customers, usage, invoices, lineage, audit
OPERATORS = frozenset({"admin", "operator"})  # close, rebuild, reconcile, verify
STAFF = frozenset({"admin", "operator", "finance"})  # reconciliation, emitters and keys
CONSOLE = STAFF  # the roles that may sign in at all


@dataclass(frozen=True)
class Access:
    roles: frozenset[str]
    what: str  # "a finance key may not <what>"
    api: tuple[str, ...]  # the API routes ("METHOD /path") the page reads or the action takes


# route name -> who may use it. Sign-in, sign-out and static files need no role.
ACCESS: dict[str, Access] = {
    "console:overview": Access(
        READERS,
        "read the overview",
        (
            "GET /v1/customers",
            "GET /v1/customers/{customer_id}/usage",
            "GET /v1/invoices",
        ),
    ),
    "console:customer": Access(
        READERS,
        "read customers",
        (
            "GET /v1/customers/{customer_id}",
            "GET /v1/customers/{customer_id}/usage",
            "GET /v1/invoices",
        ),
    ),
    "console:invoices": Access(READERS, "read invoices", ("GET /v1/invoices",)),
    "console:invoices_csv": Access(READERS, "read invoices", ("GET /v1/invoices",)),
    "console:invoice": Access(
        READERS,
        "read invoices",
        ("GET /v1/invoices/{invoice_id}", "GET /v1/invoices/{invoice_id}/revisions"),
    ),
    "console:lineage": Access(
        READERS, "read an invoice's lineage", ("GET /v1/invoices/{invoice_id}/lineage",)
    ),
    "console:verify": Access(
        READERS,
        "verify invoices",
        ("GET /v1/invoices/{invoice_id}", "GET /v1/reconciliation"),
    ),
    "console:reconciliation": Access(
        STAFF, "read reconciliation runs", ("GET /v1/reconciliation",)
    ),
    "console:reconcile": Access(OPERATORS, "run reconciliation", ()),
    "console:audit": Access(READERS, "read the audit log", ("GET /v1/audit",)),
    "console:projections": Access(OPERATORS, "read the projections", ("GET /v1/projections",)),
    "console:rebuild": Access(
        OPERATORS, "rebuild projections", ("POST /v1/projections/{name}/rebuild",)
    ),
    "console:switch": Access(
        OPERATORS, "switch projections", ("POST /v1/projections/{name}/rebuild",)
    ),
    "console:identities": Access(
        STAFF, "read emitters and keys", ("GET /v1/emitters", "GET /v1/keys")
    ),
    "console:offboard": Access(
        OPERATORS, "offboard an emitter", ("POST /v1/emitters/{emitter_id}/offboard",)
    ),
    "console:rotate": Access(ADMIN, "rotate a key", ("POST /v1/keys/{key_id}/rotate",)),
}

OPEN = frozenset(
    {
        "console:login",
        "console:sign_in",
        "console:logout_form",
        "console:logout",
        "console:static",
        "console:static/head",
    }
)

# The navigation: (route name, path, label), shown to the roles that may open each.
NAVIGATION = (
    ("console:overview", "/", "Overview"),
    ("console:invoices", "/invoices", "Invoices"),
    ("console:reconciliation", "/reconciliation", "Reconciliation"),
    ("console:audit", "/audit", "Audit"),
    ("console:projections", "/projections", "Projections"),
    ("console:identities", "/identities", "Identities"),
)


def access(route: str | None) -> Access:
    """The access rule of a console route; a route without one is open to no role."""
    return ACCESS.get(route or "", Access(frozenset(), "use this page", ()))


def may(role: str, route: str) -> bool:
    return role in access(route).roles


def navigation(role: str) -> list[tuple[str, str]]:
    """The (path, label) of each page the role may open, in menu order."""
    return [(url, label) for name, url, label in NAVIGATION if may(role, name)]


def home(role: str) -> str:
    """The first page of the role's navigation: where signing in lands by default."""
    pages = navigation(role)
    return pages[0][0] if pages else "/login"
