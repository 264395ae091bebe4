"""The litestar application: thin controllers over the billing application and read models.

Writes call `services.app`; reads go to `services.read_models` (projections), after waiting
(at most READ_WAIT_SECONDS) for them to reach the newest event, so a client reads its own
writes. `?consistency=eventual` skips the wait. Each route's guard names the roles it allows
(`api.http.auth.requires`); `api.http.errors` maps every refusal to its status, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar._openapi.utils import default_operation_id_creator
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler
from litestar.utils.sync import AsyncCallable

from api.bootstrap import Services
from api.compat import COMPAT_ROUTES
from api.console import ConsolePlugin
from api.http.auth import current_caller
from api.http.body import ExactRequest
from api.http.catalogue import CATALOGUE_ROUTES
from api.http.customers import CustomerController, PlanController
from api.http.errors import HANDLERS
from api.http.group_commit import GroupCommitter
from api.http.identities import IdentityController
from api.http.invoices import InvoiceController
from api.http.observe import metrics_text, observe
from api.http.operations import OperationsController, health
from api.http.series import SeriesController
from api.http.usage import UsageController
from api.http.webhooks import WEBHOOK_ROUTES
from api.metrics import Metrics
from billing_domain import bounds

MAX_BODY_BYTES = bounds.MAX_BODY_BYTES
# Swagger UI (npm swagger-ui-dist, vendored with its licence): /schema/swagger works offline.
SWAGGER_ASSETS = Path(__file__).parent / "static" / "swagger-ui"
SWAGGER_PATH = "/schema-assets/swagger-ui"

ROUTES: list[ControllerRouterHandler] = [
    health,
    metrics_text,
    UsageController,
    SeriesController,
    CustomerController,
    PlanController,
    InvoiceController,
    OperationsController,
    IdentityController,
    *CATALOGUE_ROUTES,
    *COMPAT_ROUTES,
    *WEBHOOK_ROUTES,
]


def operation_ids() -> Any:
    """Operation ids named after the handler (`openCustomer`), so a generated client reads
    `open_customer(...)`; a name two operations share falls back to litestar's own."""
    taken: dict[str, tuple[str, str]] = {}

    def operation_id(handler: Any, method: Any, components: list[Any]) -> str:
        fn = handler.fn
        while isinstance(fn, AsyncCallable):
            fn = fn.func
        first, *rest = str(getattr(fn, "__name__", handler.handler_name)).split("_")
        name = first + "".join(part.title() for part in rest)
        where = (str(method), "/".join(str(c) for c in components))
        if taken.setdefault(name, where) != where:
            return default_operation_id_creator(handler, method, components)
        return name

    return operation_id


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="billing",
        version="1.0.0",
        description=(
            "Event-sourced metered billing. Every request but GET /health sends "
            "`Authorization: Bearer <key>`. Quantities and money are decimal strings; every "
            "refusal answers `{detail, errors: [{field, reason, code}]}`, `detail` naming the "
            "field."
        ),
        components=Components(
            security_schemes={
                "BearerAuth": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="a key from POST /v1/keys, `billing keys create` or "
                    "BILLING_ADMIN_KEY",
                )
            }
        ),
        path="/schema",
        operation_id_creator=operation_ids(),
        render_plugins=[
            SwaggerRenderPlugin(
                js_url=f"{SWAGGER_PATH}/swagger-ui-bundle.js",
                css_url=f"{SWAGGER_PATH}/swagger-ui.css",
                standalone_preset_js_url=f"{SWAGGER_PATH}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' href='{SWAGGER_PATH}/favicon-32x32.png'>",
            )
        ],
    )


def create_app(services: Services, *, background: bool = True) -> Litestar:
    """The HTTP application over built services; `background` keeps projections current."""
    metrics = Metrics(services)
    committer = GroupCommitter(services.app, on_commit=metrics.committed)

    def start() -> None:
        if background:
            services.start_background()

    def stop() -> None:
        committer.close()

    app = Litestar(
        route_handlers=[
            *ROUTES,
            create_static_files_router(
                path=SWAGGER_PATH, directories=[SWAGGER_ASSETS], include_in_schema=False
            ),
        ],
        dependencies={"caller": Provide(current_caller, sync_to_thread=False)},
        state=State({"services": services, "committer": committer, "metrics": metrics}),
        exception_handlers=HANDLERS,
        request_class=ExactRequest,
        request_max_body_size=MAX_BODY_BYTES,
        on_startup=[start],
        on_shutdown=[stop],
        openapi_config=openapi_config(),
        debug=False,
        plugins=[ConsolePlugin()],
    )
    observe(app, metrics)
    return app
