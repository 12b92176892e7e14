"""`create_app()`: the FastAPI application over one Archivist, with its middleware, routes, UI and lifecycle."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from archivist.app import Archivist
from archivist.config import Settings
from archivist.guard.pii import install_log_redaction
from archivist.server.errors import install_error_handlers
from archivist.server.middleware import RequestMiddleware
from archivist.server.openapi import DocumentedAPI
from archivist.server.routes import router
from archivist.server.schemas import Ready, Unready
from archivist.server.services import Services

STATIC = Path(str(resources.files("archivist.server") / "static"))
#: The UI loads nothing but its own files and talks to nothing but this API.
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def proxy_options(settings: Settings) -> dict[str, Any]:
    """Return uvicorn's options for trusting a reverse proxy's X-Forwarded-* headers (none unless configured)."""
    allowed = settings.forwarded_allow_ips.strip()
    return {"proxy_headers": bool(allowed), "forwarded_allow_ips": allowed or None}


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as one JSON object per line."""
    from archivist.server.middleware import JsonLogFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def app_from_environment() -> FastAPI:
    """Return an app over settings from the environment: what each worker process of `serve --workers N` runs."""
    configure_logging(os.environ.get("ARCHIVIST_LOG_LEVEL", "INFO"))
    return create_app(Archivist.from_settings(), close_on_shutdown=True)


def create_app(archivist: Archivist, *, run_jobs: bool = True, close_on_shutdown: bool = False) -> FastAPI:
    """Return the HTTP app over `archivist`, running `workers_inline` ingestion workers in its process;
    `run_jobs=False` runs none (uploads are only queued)."""
    settings = archivist.settings
    services = Services.build(archivist, settings.workers_inline if run_jobs else 0)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        handlers = list(logging.getLogger().handlers)
        redaction = install_log_redaction(settings.pii_redact_logs, handlers)
        services.request_log.start()
        services.metrics.start()
        for worker in services.workers:
            worker.start()
        try:
            yield
        finally:
            # Uvicorn has finished the in-flight requests by now; a job cut short is requeued for the next worker.
            for worker in services.workers:
                worker.request_stop()
            for worker in services.workers:
                worker.stop()
            services.agent_drivers.close()
            services.request_log.stop()
            services.metrics.stop()
            if close_on_shutdown:
                archivist.close()
            if redaction is not None:
                for handler in handlers:
                    handler.removeFilter(redaction)

    app = DocumentedAPI(
        title="Archivist",
        version="0.1.0",
        summary="A RAG service over your documents: hybrid search and grounded answers with checked citations.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(router)
    _add_service_routes(app, services)
    if settings.cors_origins.strip():
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(
        RequestMiddleware,
        services=services,
        max_body_bytes=int(settings.max_body_mb * 1024 * 1024),
        timeout_s=settings.request_timeout_s,
    )
    return app


def _add_service_routes(app: FastAPI, services: Services) -> None:
    """Health, readiness, metrics, the OpenAPI page (local assets) and the web UI."""
    store = services.archivist.store

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        response_model=Ready,
        responses={503: {"model": Unready, "description": "store unreachable or not migrated"}},
    )
    def readyz() -> JSONResponse:
        """The store is reachable and its schema is current."""
        latest = store.expected_schema_version()
        try:
            version = store.schema_version()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "reason": f"store unreachable: {exc}"}, status_code=503)
        if version != latest:
            return JSONResponse(
                {"status": "unavailable", "reason": f"schema at v{version}, expected v{latest}"}, status_code=503
            )
        return JSONResponse({"status": "ready", "schema_version": version})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics."""
        from archivist.server.metrics import CONTENT_TYPE

        return Response(services.metrics.render(), media_type=CONTENT_TYPE)

    swagger = _swagger_assets()
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if swagger is None:
            return HTMLResponse('<p>The API description is at <a href="/openapi.json">/openapi.json</a>.</p>')
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Archivist API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    @app.get("/", include_in_schema=False, response_model=None)
    def index() -> Any:
        page = STATIC / "index.html"
        if not page.is_file():
            return HTMLResponse("<p>The web UI is not installed; the API is at <a href='/docs'>/docs</a>.</p>")
        return FileResponse(page, headers=UI_HEADERS)


def _swagger_assets() -> Path | None:
    """Return the folder of Swagger UI's files from the swagger-ui-bundle package (never a CDN), if installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))
