"""The JSON API under /api/v1: each route is a CLI command's `--json` twin, through the same service.

A caller authenticates with `Authorization: Bearer <token>` (`relay-admin token add`); the token acts
as its user, with that user's role and scope. Answers are checked in SPEC.md's order: 401 (in the
dependency, before anything is read), then the service's 404, 403 and 422. That is why PUT reads its
body itself, after the scope and role checks, instead of letting FastAPI parse it first: a malformed
body from someone who may not change the tenant is a 403 (or 404), not a 422.
"""

from __future__ import annotations

import io
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from openpyxl import Workbook

from admin import services
from admin.auth import user_for_token
from admin.context import Context
from admin.export_texts import DEFAULT_LANGUAGE, LANGUAGES
from admin.render import records_json
from admin.web.errors import WebError, answers, unauthorized
from admin.web.schemas import (
    AuditOut,
    ErrorBody,
    RecordOut,
    RotationOut,
    SenderIn,
    TenantOut,
    ValidationOut,
)
from admin.web.state import context_for, web_state
from relay.core.store import utcnow

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAX_BODY = 64 * 1024  # three short fields; anything larger is not a sender

bearer = HTTPBearer(auto_error=False, scheme_name="token",
                    description="an admin API token from `relay-admin token add --user NAME`")


def api_context(request: Request,
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Context:
    """The token's user as the acting user, or 401. The token is never logged or echoed."""
    if credentials is None:
        raise unauthorized()
    state = web_state(request)
    user = user_for_token(state.store, credentials.credentials)
    if user is None:
        raise unauthorized()
    return context_for(state, user)


Ctx = Annotated[Context, Depends(api_context)]
Tenant = Annotated[str, "the tenant id"]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("no valid token (`WWW-Authenticate: Bearer`)"),
    404: _error("no such tenant, or one outside the caller's scope (the same answer)"),
    403: _error("the caller's role may not do this (audited)"),
    422: _error("bad input: `field` names it, `message` is the CLI's one line, `code` (if given) "
                "a stable code for the problem"),
}

router = APIRouter(prefix="/api/v1", tags=["tenants"], responses=ERRORS)


@router.get("/tenants", summary="The tenants in the caller's scope",
            description="CLI twin: `relay-admin tenant list --json`.",
            responses={200: {"model": list[TenantOut]}})
def list_tenants(ctx: Ctx) -> JSONResponse:
    with answers():
        return JSONResponse(services.list_tenants(ctx))


@router.get("/tenants/{tenant}", summary="One tenant: sender, status, keys, last checks",
            description="CLI twin: `relay-admin tenant show TENANT --json`.",
            responses={200: {"model": TenantOut}})
def show_tenant(tenant: Tenant, ctx: Ctx) -> JSONResponse:
    with answers():
        return JSONResponse(services.show_tenant(ctx, tenant))


_SENDER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": SenderIn.model_json_schema()}}}}


@router.put("/tenants/{tenant}", summary="Create or change the sender",
            description="CLI twin: `relay-admin tenant set TENANT --name --email --domain "
                        "[--return-path]`. A new tenant, address, domain or return-path label gets a "
                        "new DKIM key and status `pending`; a name-only change keeps key and status. "
                        "A scoped caller never creates a tenant (404).",
            status_code=200, openapi_extra=_SENDER_BODY,
            responses={200: {"model": TenantOut, "description": "changed, or unchanged"},
                       201: {"model": TenantOut, "description": "created"}})
async def put_tenant(tenant: Tenant, request: Request, ctx: Ctx) -> JSONResponse:
    body = await _read_body(request)
    return await run_in_threadpool(_put_tenant, ctx, tenant, body)


def _put_tenant(ctx: Context, tenant: str, body: bytes) -> JSONResponse:
    with answers():
        services.may_set_sender(ctx, tenant)  # 404, 403: before the body is even looked at
        raw = sender_body(body)
        change = services.set_sender(ctx, tenant, raw)
        data = services.tenant_view(ctx, change.tenant) | {
            "key_issued": change.key_issued, "warnings": services.sender_warnings(change.tenant.sender)}
    if change.created:
        return JSONResponse(data, status_code=201, headers={"Location": f"/api/v1/tenants/{change.tenant.id}"})
    return JSONResponse(data)


async def _read_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise WebError(413, f"the body is larger than {MAX_BODY} bytes")
    return bytes(body)


_FLAGS = {"name": "--name", "email": "--email", "domain": "--domain", "return_path": "--return-path"}


def sender_body(body: bytes) -> services.SenderInput:
    """The PUT body as the CLI's arguments; what the CLI's parser would refuse is a 422 in its words."""
    try:
        data = json.loads(body)
    except ValueError:
        raise WebError(422, 'the body must be JSON: {"name": ..., "email": ..., "domain": ...}') from None
    if not isinstance(data, dict):
        raise WebError(422, 'the body must be a JSON object: {"name": ..., "email": ..., "domain": ...}')
    for key in data:
        if key not in _FLAGS:
            raise WebError(422, f"unrecognized field: {str(key)!r} (known: name, email, domain, "
                                "return_path)", str(key) if len(str(key)) <= 40 else None)
    missing = [key for key in ("name", "email", "domain") if key not in data]
    if missing:
        flags = ", ".join(_FLAGS[key] for key in missing)
        raise WebError(422, f"the following arguments are required: {flags}", missing[0])
    for key, value in data.items():
        if not isinstance(value, str) and not (key == "return_path" and value is None):
            raise WebError(422, f"{_FLAGS[key]}: must be a string", key)
    return services.SenderInput(name=data["name"], email=data["email"], domain=data["domain"],
                                return_path=data.get("return_path"))


@router.get("/tenants/{tenant}/records", summary="The DNS records to publish",
            description="CLI twin: `relay-admin records TENANT --json`.",
            responses={200: {"model": list[RecordOut]}})
def records(tenant: Tenant, ctx: Ctx) -> JSONResponse:
    with answers():
        _, found = services.tenant_records(ctx, tenant)
    return JSONResponse(records_json(found, utcnow()))


Lang = Annotated[str, Query(description="the file's language: nl (default), en or fr",
                            json_schema_extra={"enum": list(LANGUAGES)})]


@router.get("/tenants/{tenant}/export.xlsx", summary="The Excel hand-over for IT, as a download",
            description="CLI twin: `relay-admin export TENANT --output FILE.xlsx --lang LANG`.",
            response_class=Response,
            responses={200: {"content": {XLSX: {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the .xlsx file (Records and Instructions sheets)"}})
def export(tenant: Tenant, ctx: Ctx, lang: Lang = DEFAULT_LANGUAGE) -> Response:
    with answers():
        found, workbook = services.export_workbook(ctx, tenant, lang)
    return xlsx_response(workbook, f"{found.id}-dns-{lang}.xlsx")


def xlsx_response(workbook: Workbook, filename: str) -> Response:
    """The workbook as a download; `filename` is built from a tenant id (a-z, 0-9, '.', '_', '-')."""
    buffer = io.BytesIO()
    workbook.save(buffer)
    return Response(buffer.getvalue(), media_type=XLSX,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.post("/tenants/{tenant}/validate", summary="Check DNS now and update the status",
             description="CLI twin: `relay-admin validate TENANT --json`. Takes up to a few seconds "
                         "(DNS). `verified` false is still 200: the check was made.",
             responses={200: {"model": ValidationOut}})
def validate(tenant: Tenant, ctx: Ctx) -> JSONResponse:
    with answers():
        report = services.validate(ctx, tenant)
    return JSONResponse(report.to_json())


@router.post("/tenants/{tenant}/rotate-key", summary="Issue the next DKIM key",
             description="CLI twin: `relay-admin rotate-key TENANT --json` (without the key file's "
                         "path). 409 while a next key is still unpublished.",
             responses={200: {"model": RotationOut},
                        409: _error("a next key is still waiting to be seen published")})
def rotate_key(tenant: Tenant, ctx: Ctx) -> JSONResponse:
    with answers(conflict=True):
        rotation = services.rotate(ctx, tenant)
        return JSONResponse(services.rotation_json(ctx, rotation))


@router.get("/tenants/{tenant}/audit", summary="The tenant's audit log, oldest first",
            description="CLI twin: `relay-admin audit TENANT --json`.",
            responses={200: {"model": list[AuditOut]}})
def audit(tenant: Tenant, ctx: Ctx) -> JSONResponse:
    with answers():
        entries = services.audit_entries(ctx, tenant)
    return JSONResponse([services.entry_json(entry) for entry in entries])
