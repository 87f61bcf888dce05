"""The API's bodies as pydantic models, for the OpenAPI document: the CLI's `--json` shapes, described.

The answers are built by `admin.services` (the same dictionaries the CLI prints); these models only
document them, so an answer is never filtered through a model that could drift from the CLI.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SenderIn(BaseModel):
    """`PUT /api/v1/tenants/{tenant}`: the settings screen's three fields (+ the return-path label)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="display name of the From header, e.g. Acme BV")
    email: str = Field(description="sender address, in the domain or a name below it")
    domain: str = Field(description="the domain the records are published in")
    return_path: str | None = Field(
        default=None, description="label of the return-path host (default: kept, or `bounce`)")


class ErrorDetail(BaseModel):
    field: str | None = Field(description="the input field at fault (name, email, domain, return_path, "
                                          "tenant, lang), or null")
    message: str = Field(description="one line; for 422 the CLI's own message")
    code: str | None = Field(default=None, description="422 only, when the input check has one: a "
                                                       "stable code for the problem (e.g. email_has_name), "
                                                       "for clients that show it in their own words")


class ErrorBody(BaseModel):
    error: ErrorDetail


class KeyOut(BaseModel):
    selector: str
    state: Literal["active", "next", "retiring"]
    name: str
    created_at: str | None
    remove_after: str | None
    note: str


class CheckOut(BaseModel):
    purpose: Literal["dkim", "return-path", "dmarc"]
    type: str
    name: str
    status: Literal["ok", "missing", "mismatch", "warning", "error"]
    expected: str
    found: list[str]
    diagnosis: str
    checked_at: str | None = None
    required: bool | None = None


class TenantOut(BaseModel):
    """`tenant show --json` (`tenant list --json` leaves out keys and checks)."""

    model_config = ConfigDict(extra="allow")

    tenant: str
    name: str
    email: str
    domain: str
    domain_unicode: str
    return_path: str
    return_path_host: str
    selector: str | None
    status: Literal["pending", "verified", "degraded", "failed"]
    created_at: str | None
    updated_at: str | None
    last_validated_at: str | None
    verified_at: str | None
    keys: list[KeyOut] | None = None
    checks: list[CheckOut] | None = None
    key_issued: bool | None = Field(default=None, description="PUT only: a new DKIM key was issued")
    warnings: list[str] | None = Field(default=None, description="PUT only: accepted, but said plainly"
                                       " (e.g. an address DMARC may not align)")


class RecordOut(BaseModel):
    """One record of `records --json`."""

    model_config = ConfigDict(extra="allow")

    type: Literal["TXT", "CNAME"]
    name: str
    value: str
    ttl: int
    purpose: Literal["dkim", "return-path", "dmarc"]
    required: bool
    state: Literal["active", "next", "retiring"] | None = None
    remove_after: str | None = None
    note: str | None = None


class ValidationOut(BaseModel):
    """`validate --json`."""

    model_config = ConfigDict(extra="allow")

    tenant: str
    verified: bool
    outcome: str
    status: str
    checks: list[CheckOut]


class RotationOut(BaseModel):
    """`rotate-key --json`, without the key file's path on the server."""

    tenant: str
    selector: str
    state: str
    record: RecordOut
    active_selector: str
    key_overlap_seconds: float


class AuditOut(BaseModel):
    time: str
    actor: str
    action: str
    tenant: str | None
    outcome: Literal["done", "denied"]
    detail: str
