"""The admin web application: the API and the pages on one FastAPI app, errors rendered in one place.

FastAPI generates the OpenAPI 3 document (`/api/openapi.json`) from the API's routes; its interactive
documentation pages are off, since they load script from a CDN (the server works on a closed network
and its CSP allows nothing from elsewhere).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from admin.web import api, pages
from admin.web.errors import WebError, storage_failed
from admin.web.security import SecurityHeaders
from admin.web.state import WebState
from relay.core.settings import Settings
from relay.core.store import Store, StoreError

log = logging.getLogger("relay.admin.web")

API_PREFIX = "/api/"


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


def _render(request: Request, error: WebError) -> Response:
    return error.json() if _is_api(request) else pages.error_page(request, error)


async def _web_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebError)
    return _render(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (no such route, method not allowed) in our shape."""
    assert isinstance(exc, HTTPException)
    words = {404: "no such page or route", 405: "method not allowed"}
    return _render(request, WebError(exc.status_code, words.get(exc.status_code, str(exc.detail)),
                                     headers=dict(exc.headers or {})))


async def _validation_error(request: Request, exc: Exception) -> Response:
    """A parameter FastAPI itself could not read: a 422 naming it, in our shape."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    field = location[-1] if location else None
    return _render(request, WebError(422, f"{field or 'request'}: {first.get('msg', 'invalid')}", field))


async def _store_error(request: Request, exc: Exception) -> Response:
    log.error("store: %s", exc)  # the details stay in the server's log
    return _render(request, storage_failed())


async def _sign_in(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, pages.SignInRequired)
    return pages.sign_in_redirect(request, exc)


def create_app(settings: Settings, store: Store) -> FastAPI:
    app = FastAPI(
        title="accounton-relay admin API",
        version="1",
        description="Each route is a `relay-admin` command's `--json` twin and runs the same code. "
                    "Authenticate with `Authorization: Bearer <token>` (`relay-admin token add`). "
                    "Errors: `{\"error\": {\"field\", \"message\"}}`, checked in the order 401, 404, "
                    "403, 422.",
        openapi_url="/api/openapi.json", docs_url=None, redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.web = WebState(settings=settings, store=store)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(packages=[("admin.web", "static")]), name="static")
    app.add_exception_handler(WebError, _web_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(pages.SignInRequired, _sign_in)
    app.add_middleware(SecurityHeaders)
    return app

