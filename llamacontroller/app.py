"""The app factory. Everything the app owns is built in the lifespan and kept in one Services
object (services/core.py) on app.state; nothing is created at import time.

What the server runs (`create_app`), outside in: the front door (api/frontdoor.py: body caps,
credentials, security headers, for every request), the passthrough dispatcher (api/openai.py:
OpenAI passthrough POSTs go straight to the proxy), then the FastAPI app (`create_api`) for
everything else. The two pure-ASGI layers sit outside FastAPI so that a streamed token passes no
middleware of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp

from llamacontroller import __version__
from llamacontroller.api import errors, management, ollama, openai, root, system
from llamacontroller.api.frontdoor import FrontDoor
from llamacontroller.config import Settings, load_settings
from llamacontroller.services.core import Services, bootstrap_admin, open_services
from llamacontroller.services.models import reload_on_sighup, start_models, watch_config
from llamacontroller.web import login, pages, session

log = logging.getLogger(__name__)



def create_app(settings: Settings) -> ASGIApp:
    """The whole app, as the server runs it."""
    api = create_api(settings)

    def services() -> Services | None:
        return getattr(api.state, "services", None)

    return FrontDoor(openai.Passthrough(api, services=services), settings=settings, services=services)


def create_api(settings: Settings) -> FastAPI:
    """The routes (and the lifespan that builds the services). Served only behind the front door."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await open_services(settings)
        generated = await bootstrap_admin(services)
        if generated:
            # Printed once, to the console only: never to a log file or the database.
            print(f"\n  Created user 'admin' with password: {generated}\n  Change it after logging in.\n", flush=True)
        await services.supervisor.start()
        services.usage.start()
        watcher = await start_models(services)
        config_watcher = (
            asyncio.create_task(watch_config(services), name="config-watcher") if settings.watch_config else None
        )
        stop_sighup = reload_on_sighup(services)
        listener = (
            asyncio.create_task(services.shared.listen(services.auth.drop_cached), name="revocations")
            if services.shared
            else None
        )
        app.state.services = services
        log.info("LlamaController ready with %d model(s)", len(services.supervisor.engines))
        try:
            yield
        finally:
            stop_sighup()
            if listener is not None:
                listener.cancel()
            if config_watcher is not None:
                config_watcher.cancel()
            watcher.cancel()
            await services.catalog.close()
            await services.supervisor.close()
            await services.usage.close()
            await services.close()

    app = FastAPI(
        title="LlamaController",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/v1/docs",
        swagger_ui_oauth2_redirect_url="/api/v1/docs/oauth2-redirect",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    errors.install(app)
    app.include_router(system.router)
    app.include_router(openai.router)
    app.include_router(management.router)
    app.include_router(ollama.router)
    app.include_router(root.router)
    app.include_router(login.router)
    app.include_router(pages.router)
    session.install(app)
    app.mount("/static", StaticFiles(packages=[("llamacontroller", "static")]), name="static")
    return app


def from_environment() -> ASGIApp:
    """The app for an ASGI server started by its own command (`granian --interface asgi --factory
    llamacontroller.app:from_environment`): settings from LLAMACONTROLLER_* and the config dir.
    `llamacontroller serve` (uvicorn) is the supported way; bench/proxy.py compares the two."""
    return create_app(load_settings())
