"""The FastAPI application: routers, error shape, body limit, request metrics.

Every error answers ``{"error": <code>, "message": <what to do>}`` (plus ``field``
when one field is at fault). Nothing but /healthz is served without a token.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from overcloud import __version__
from overcloud.api.deps import ensure_admin_token, get_principal
from overcloud.api.requests import RequestError, too_large
from overcloud.api.routes import datalake, fabric, overclouds, services, system, underclouds
from overcloud.api.streams import EventHub
from overcloud.composition.controller import NotComposable, ServiceConflict, ServiceNotFound
from overcloud.composition.pattern import MAX_PATTERN_BYTES, PatternError
from overcloud.composition.placement import PlacementError
from overcloud.limits import ECHO_CHARS, clip, return_large_buffers, shown
from overcloud.repository import InvalidTransition, NotFound
from overcloud.tower import ArchiveNotFound, NoDataLake, NoFabric, QuotaExceeded, Tower
from overcloud.underclouds.base import UnderCloudError
from overcloud.underclouds.cloud.config import SizeNotMapped
from overcloud.underclouds.cloud.provider import CloudQuotaExceeded, CloudUnavailable

logger = logging.getLogger(__name__)

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "body_too_large", 415: "unsupported_media_type", 422: "invalid", 429: "quota_exceeded"}


def error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    # a message may echo what was sent (a path, a key): never more than a few hundred characters of it
    body: dict[str, Any] = {"error": CODES.get(status, "error"), "message": clip(message, 4 * ECHO_CHARS)}
    if field:
        body["field"] = clip(field)
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimit:
    """Refuse a declared Content-Length over ``limit`` with 413 before reading anything.
    Bodies without a length (chunked) are counted while read, in ``read_body``."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # a service pattern may be bigger than the small JSON requests
            limit = MAX_PATTERN_BYTES if scope.get("path", "").endswith("/services") else self.limit
            for name, value in scope.get("headers", []):
                if name == b"content-length" and value.isdigit() and int(value) > limit:
                    what = "the pattern is over 10 MiB" if limit == MAX_PATTERN_BYTES else too_large(limit)
                    resp = error(413, what)
                    return await resp(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(tower: Tower) -> FastAPI:
    app = FastAPI(
        title="OverCloud Tower",
        version=__version__,
        description="Build, watch and delete OverClouds. Every endpoint but /healthz needs "
        "`Authorization: Bearer <token>` (the admin token is in `<state-dir>/admin.token`).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.tower = tower
    app.state.admin_token = ensure_admin_token(tower.settings.token_path)
    app.state.streams = EventHub(tower.repo, tower.is_running, max_total=tower.settings.max_streams,
                                 max_per_token=tower.settings.max_streams_per_token)
    tower.metrics.watch_status(tower.repo.count_by_status)
    if tower.ssh is not None:
        tower.metrics.watch_ssh(tower.ssh.transport.round_trips, getattr(tower.ssh, "agent_calls", None))
    return_large_buffers()  # a refused 10 MiB body leaves no memory behind (limits.py)

    auth = [Depends(get_principal)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    def openapi_json() -> dict[str, Any]:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=auth)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="OverCloud Tower API")

    app.include_router(system.router)
    app.include_router(overclouds.router)
    app.include_router(datalake.router)
    app.include_router(fabric.router)
    app.include_router(services.router)
    app.include_router(underclouds.router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        tower.metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        tower.metrics.request_seconds.labels(request.method, path).observe(time.perf_counter() - start)
        return response

    app.add_middleware(BodyLimit, limit=tower.settings.max_body_bytes)

    @app.exception_handler(StarletteHTTPException)  # Starlette's own too: FastAPI raises them for 404, 405, bad bodies
    async def http_error(_: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        field = clip(".".join(str(p) for p in first.get("loc", ())[1:])) or None  # a key of the body, maybe
        return error(422, f"{field or 'request'}: {clip(str(first.get('msg', 'invalid')))}", field)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError):
        return error(exc.status, exc.message, exc.field)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound):
        return error(404, f"no OverCloud with id {shown(exc.overcloud_id)}; `GET /overclouds` lists them")

    @app.exception_handler(InvalidTransition)
    async def conflict(_: Request, exc: InvalidTransition):
        hint = " wait until it is READY or FAILED, then delete it" if exc.current == "CREATING" else ""
        return error(409, f"OverCloud {exc.overcloud_id} is {exc.current}; it cannot become {exc.new} now;{hint}".rstrip(";"))

    @app.exception_handler(ArchiveNotFound)
    async def no_archive(_: Request, exc: ArchiveNotFound):
        return error(404, str(exc), "datalake.restore_from")

    from overcloud.fabric.prometheus import PromQLError

    @app.exception_handler(PromQLError)
    async def promql(_: Request, exc: PromQLError):
        return error(exc.status if 400 <= exc.status < 500 else 400, str(exc.message), "query")

    @app.exception_handler(PatternError)
    async def bad_pattern(_: Request, exc: PatternError):
        body = {"error": "invalid", "message": str(exc), "manifest": exc.manifest}
        if exc.field:
            body["field"] = exc.field
        return JSONResponse(body, status_code=422)

    @app.exception_handler(PlacementError)
    async def unplaceable(_: Request, exc: PlacementError):
        return JSONResponse({"error": "unplaceable", "message": str(exc), "manifest": f"Deployment/{exc.deployment}",
                             "field": "spec.template.spec"}, status_code=422)

    # errors whose own message says it all: only the status differs
    def plain(status: int):
        async def handler(_: Request, exc: Exception):
            return error(status, str(exc))
        return handler

    for exc_type, status in ((NoDataLake, 404), (NoFabric, 409), (ServiceNotFound, 404), (ServiceConflict, 409),
                             (NotComposable, 409), (QuotaExceeded, 429)):
        app.add_exception_handler(exc_type, plain(status))

    @app.exception_handler(CloudQuotaExceeded)
    async def cloud_quota(_: Request, exc: CloudQuotaExceeded):
        # nothing was made: the cloud's (or the site's max_servers) numbers say what does not fit
        return JSONResponse({"error": "quota_exceeded", "message": str(exc), "site": exc.site, "numbers": exc.numbers},
                            status_code=429)

    @app.exception_handler(SizeNotMapped)
    async def size_not_mapped(_: Request, exc: SizeNotMapped):
        return error(422, str(exc), field="size")

    @app.exception_handler(CloudUnavailable)
    async def cloud_unavailable(_: Request, exc: CloudUnavailable):
        return JSONResponse({"error": "unavailable", "message": str(exc), "site": exc.site}, status_code=503)

    @app.exception_handler(UnderCloudError)
    async def undercloud_unavailable(_: Request, exc: UnderCloudError):
        return JSONResponse({"error": "unavailable", "message": str(exc)}, status_code=503)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception):
        logger.exception("unhandled error")
        return JSONResponse({"error": "internal", "message": "internal error; see the Tower log"}, status_code=500)

    return app
