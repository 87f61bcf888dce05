"""Every web error is one value: a status, the field it is about (if any) and one line, rendered in one place.

    WebError
    ├── 401  no valid token (API) / no session (page: a redirect to /login instead)
    ├── 403  the role may not, or a form without its CSRF token; audited
    ├── 404  an unknown tenant, or one outside the acting user's scope (the same answer)
    ├── 409  the tenant cannot do this now (a rotation already under way)
    ├── 422  bad input: the field, the CLI's one line and (from admin.inputs) its code
    ├── 429  too many failed sign-ins: wait
    └── 503  the store or the keys directory cannot be used; details only in the server's log

The API renders them as `{"error": {"field": ..., "message": ...}}` (plus `"code"` when the input
check gave one, e.g. `email_has_name`), the page as an HTML page in its language. The admin services
raise the CLI's errors (`admin.context`); `from_cli` maps them here, so the statuses follow the
services' order: 404, then 403, then 422. Messages never carry internals: an unknown tenant is named
without the store's path, a storage failure without file names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from fastapi.responses import JSONResponse

from admin.context import (
    CliError,
    PermissionDenied,
    StorageError,
    TenantNotFound,
    UsageError,
)

log = logging.getLogger("relay.admin.web")

# The CLI names a field as its option or argument; the API and the page name it as in the JSON body.
FIELDS = {"--name": "name", "--email": "email", "--domain": "domain", "--return-path": "return_path",
          "TENANT": "tenant", "--lang": "lang"}
_FIELD_PREFIX = re.compile(r"(--[a-z-]+|[A-Z]+): ")


@dataclass
class WebError(Exception):
    status: int
    message: str
    field: str | None = None
    headers: dict[str, str] = dataclass_field(default_factory=dict)
    reason: str = ""  # a kind the page explains in its own words: "csrf"
    code: str | None = None  # an input check's stable code (admin.inputs), for clients that translate

    def __str__(self) -> str:
        return self.message

    def json(self) -> JSONResponse:
        detail: dict[str, str | None] = {"field": self.field, "message": self.message}
        if self.code is not None:  # additive: an error without a code keeps the SPEC's two keys
            detail["code"] = self.code
        return JSONResponse({"error": detail}, status_code=self.status, headers=self.headers)


def unauthorized() -> WebError:
    return WebError(401, "a valid API token is required: Authorization: Bearer <token> "
                         "(see `relay-admin token add`)", headers={"WWW-Authenticate": "Bearer"})


def not_found(tenant_id: str) -> WebError:
    return WebError(404, f"no tenant {tenant_id!r}", "tenant")


def storage_failed() -> WebError:
    return WebError(503, "the server could not use its store or keys directory; nothing changed "
                         "(the server's log says why)")


def split_field(message: str) -> tuple[str | None, str]:
    """`--email: 'x' is not...` -> ("email", "'x' is not..."); a message without a field -> (None, it)."""
    match = _FIELD_PREFIX.match(message)
    if match and match.group(1) in FIELDS:
        return FIELDS[match.group(1)], message[match.end():]
    return None, message


def invalid(exc: UsageError) -> WebError:
    """A 422 naming the field, with the CLI's one line as the message (and its code, if any)."""
    field_name, _ = split_field(str(exc))
    return WebError(422, str(exc), field_name, code=exc.code)


def is_unknown_tenant(exc: UsageError) -> bool:
    """Whether the services refused the tenant as unknown or outside the scope (the same error)."""
    return isinstance(exc, TenantNotFound)


@contextmanager
def answers(*, conflict: bool = False) -> Iterator[None]:
    """Turn the services' errors into web answers; `conflict`: a usage error is the state's, not the input's."""
    try:
        yield
    except PermissionDenied as exc:
        raise WebError(403, str(exc)) from None
    except UsageError as exc:
        if isinstance(exc, TenantNotFound):
            raise not_found(exc.tenant) from None
        if conflict:
            raise WebError(409, str(exc), split_field(str(exc))[0]) from None
        raise invalid(exc) from None
    except StorageError as exc:
        log.error("%s", exc)
        raise storage_failed() from None
    except CliError as exc:  # any other kind the services may add: a refusal, never internals
        raise WebError(400, str(exc)) from None
