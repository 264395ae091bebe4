"""The finance console mounted on the HTTP application: its router, templates, static files
and the sessions of the people signed in."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import Router
from litestar.config.app import AppConfig
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.plugins import InitPluginProtocol
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from api.console import entry, identities, operations, pages
from api.console.errors import HANDLERS
from api.console.sessions import SessionStore
from api.console.signin import Console
from api.console.view import when

HERE = Path(__file__).resolve().parent
STATIC_PATH = "/console/static"

ROUTES = [
    entry.login_form,
    entry.login,
    entry.logout_form,
    entry.logout,
    pages.overview,
    pages.customer,
    pages.invoices,
    pages.invoices_csv,
    pages.invoice,
    pages.lineage,
    pages.verify,
    operations.reconciliation,
    operations.run_reconciliation,
    operations.audit,
    operations.projections,
    operations.rebuild,
    operations.switch,
    identities.identities,
    identities.offboard,
    identities.rotate,
]


def console_router() -> Router:
    return Router(
        path="/",
        route_handlers=ROUTES,
        exception_handlers=HANDLERS,
        include_in_schema=False,
    )


def template_engine() -> JinjaTemplateEngine:
    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals["static"] = lambda name: f"{STATIC_PATH}/{name}"
    environment.filters["when"] = when
    return JinjaTemplateEngine(engine_instance=environment)


class ConsolePlugin(InitPluginProtocol):
    """Mounts the console on `create_app`'s application (`plugins=[ConsolePlugin()]`)."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        services = app_config.state["services"]
        sessions = SessionStore(services.read_models.store)
        app_config.state["console"] = Console(services, sessions)
        app_config.route_handlers = [
            *app_config.route_handlers,
            console_router(),
            create_static_files_router(
                path=STATIC_PATH,
                directories=[HERE / "static"],
                name="console:static",
                include_in_schema=False,
            ),
        ]
        app_config.template_config = TemplateConfig(instance=template_engine())
        return app_config
