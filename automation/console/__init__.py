"""The HR console: server-rendered pages in the service's web app, under ``/console``.

:func:`add_console` mounts it on the app :func:`automation.web.create_app` builds. The pages
live in a few modules, each an ``APIRouter``: :mod:`.access` (sign-in, sign-out, home) and the
page modules; what they share (the signed-in viewer, roles, CSRF, who sees whom, rendering)
is in :mod:`.base`. The pages are not part of the OpenAPI description, which covers the JSON
endpoints.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from automation.console.base import (
    STATIC_DIR,
    ConsoleError,
    NotSignedIn,
    render,
    sign_in_url,
)
from automation.runtime import Runtime


def add_console(app: FastAPI, get_runtime: Callable[[], Runtime]) -> None:
    from automation.console import access, clients, configuration, oidc, people, queues, reports

    app.state.console_runtime = get_runtime
    for module in (access, oidc, people, configuration, queues, reports, clients):
        app.include_router(module.router)
        if hasattr(module, "install"):  # JSON endpoints (in the OpenAPI description), state
            module.install(app)
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")

    @app.exception_handler(ConsoleError)
    async def console_error(request: Request, exc: ConsoleError) -> Response:
        if isinstance(exc, NotSignedIn) and request.method in ("GET", "HEAD"):
            return RedirectResponse(sign_in_url(request), status_code=303)
        titles = {401: "Signed out", 403: "Not allowed", 404: "Not found"}
        message = exc.message or (
            "Your session has ended; sign in again." if isinstance(exc, NotSignedIn) else ""
        )
        return render(
            request, "message.html", None, exc.status,
            title=titles.get(exc.status, "Cannot do that"), message=message,
        )  # fmt: skip
