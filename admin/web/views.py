"""What the settings page shows, as plain data for its template, taken from the admin services.

The page is the seed's screen: the three fields, the records to publish, the last check of each, and
what the acting user may do (an accountant sees the same page with nothing to change).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import field as dataclass_field  # Problem has an attribute named `field`
from datetime import datetime

from admin import inputs, services
from admin.context import Context, UsageError
from admin.roles import may
from admin.web.errors import split_field
from admin.web.i18n import Translator
from relay.core.models import CheckResult, KeyState, Tenant
from relay.core.store import utcnow
from relay.domains.records import DnsRecord, human_time, removable

NEW = "new"  # the status shown for a tenant that has no sender yet (only unscoped admins see it)
FORM_FIELDS = ("name", "email", "domain")


@dataclass(frozen=True)
class Problem:
    """One refused input: the field it is about ("" when none of the form's), the CLI's words, and
    the input check's code and values, from which the page says it in its own language."""

    field: str
    detail: str  # the CLI's message without its field prefix
    message: str  # the CLI's whole line
    code: str | None = None
    params: dict[str, str] = dataclass_field(default_factory=dict)

    @classmethod
    def of(cls, exc: UsageError) -> "Problem":
        name, detail = split_field(str(exc))
        return cls(name if name in FORM_FIELDS else "", detail, str(exc), exc.code, exc.params)

    @property
    def empty(self) -> bool:
        """A field left empty: the page asks for it ("Vul de naam in") instead of explaining."""
        return self.code == "empty"


@dataclass(frozen=True)
class RecordRow:
    index: int
    type: str
    host: str  # as typed into a DNS provider's form
    name: str  # fully qualified
    value: str
    ttl: int
    purpose: str
    required: bool
    state: str | None  # DKIM: active, next, retiring
    remove_after: str | None
    removable: bool
    check: str | None  # the last check's status of this record, if it was checked


@dataclass(frozen=True)
class CheckRow:
    purpose: str
    type: str
    name: str
    status: str
    required: bool
    expected: str
    found: tuple[str, ...]
    diagnosis: str


@dataclass(frozen=True)
class SettingsView:
    tenant: str
    status: str  # the tenant's status, or NEW
    name: str  # the form's values: as stored, or as typed when the form was refused
    email: str
    domain: str
    sender_email: str  # as stored (the status line speaks of the sender in force)
    sender_domain: str
    can_change: bool
    can_validate: bool
    records: list[RecordRow] = field(default_factory=list)
    checks: list[CheckRow] = field(default_factory=list)
    last_validated: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.status != NEW

    def problem(self, name: str) -> Problem | None:
        return next((p for p in self.problems if p.field == name), None)


def page_words(text: str, label: Callable[[str], str]) -> str:
    """The CLI's words on the page: an option (`--email`) becomes the field's label ("E-mail address")."""
    for name in FORM_FIELDS:
        text = text.replace(f"--{name}", _quoted_label(name, label))
    return text


def _quoted_label(name: str, label: Callable[[str], str]) -> str:
    return f"\u201c{label('field.' + name)}\u201d"


def problem_words(problem: Problem, t: Translator) -> str | None:
    """The problem in the page's language (`input.<code>`), or None: the page then shows the CLI's
    English words instead, marked lang="en" (an error without a code, or a text not written yet).

    The values were rendered by the input check (`repr`: control characters escaped); the result is
    plain text that the template autoescapes like any other.
    """
    key = f"input.{problem.code}"
    if problem.code is None or not t.has(key):
        return None
    labels = {f"{name}_field": _quoted_label(name, t) for name in FORM_FIELDS}
    try:
        return t(key, **(labels | problem.params))
    except (KeyError, IndexError):  # a text asking for a value this error does not carry
        return None


def readable_email(address: str) -> str:
    local, _, host = address.rpartition("@")
    return f"{local}@{inputs.unicode_domain(host)}"


def _record_rows(records: list[DnsRecord], checks: list[CheckResult], now: datetime) -> list[RecordRow]:
    by_record = {(c.purpose, c.name): c.status.value for c in checks}
    return [
        RecordRow(index=index, type=r.type, host=r.relative_name, name=r.name, value=r.value,
                  ttl=r.ttl, purpose=r.purpose, required=r.required,
                  state=r.state.value if r.state else None,
                  remove_after=human_time(r.remove_after) if r.remove_after else None,
                  removable=r.state is KeyState.RETIRING and removable(r.remove_after, now),
                  check=by_record.get((r.purpose, r.name)))
        for index, r in enumerate(records, start=1)
    ]


def _check_rows(checks: list[CheckResult]) -> list[CheckRow]:
    return [CheckRow(purpose=c.purpose, type=c.type, name=c.name, status=c.status.value,
                     required=c.required, expected=c.expected, found=c.found, diagnosis=c.diagnosis)
            for c in checks]


@dataclass(frozen=True)
class Rights:
    change: bool
    validate: bool


def may_create(ctx: Context, tenant_id: str) -> bool:
    """Whether the acting user may set up a tenant that does not exist yet (unscoped owners, admins)."""
    user = ctx.acting_user
    return (user is not None and not user.scoped and may(user.role, "tenant.set")
            and inputs.IDENTIFIER.fullmatch(tenant_id) is not None)


def settings_view(ctx: Context, tenant_id: str, *, typed: services.SenderInput | None = None,
                  problems: list[UsageError] | None = None) -> SettingsView:
    """The page of `tenant_id` for the acting user; an unknown tenant (or one out of scope) raises the
    services' unknown-tenant error, except for a user who may create it: an empty form."""
    user = ctx.acting_user
    assert user is not None  # a signed-in user
    rights = Rights(change=may(user.role, "tenant.set"), validate=may(user.role, "validate"))
    refused = [Problem.of(p) for p in problems or []]
    if ctx.store.get_tenant(tenant_id) is None and may_create(ctx, tenant_id):
        return SettingsView(tenant=tenant_id, status=NEW, name=typed.name if typed else "",
                            email=typed.email if typed else "", domain=typed.domain if typed else "",
                            sender_email="", sender_domain="", problems=refused,
                            can_change=rights.change, can_validate=rights.validate)
    tenant, records = services.tenant_records(ctx, tenant_id)
    return _existing(ctx, tenant, records, typed, refused, rights)


def _existing(ctx: Context, tenant: Tenant, records: list[DnsRecord], typed: services.SenderInput | None,
              refused: list[Problem], rights: Rights) -> SettingsView:
    checks = ctx.store.latest_checks(tenant.id)
    sender = tenant.sender
    email, domain = readable_email(sender.email), inputs.unicode_domain(sender.domain)
    return SettingsView(
        tenant=tenant.id, status=str(tenant.status),
        name=typed.name if typed else sender.name,
        email=typed.email if typed else email,
        domain=typed.domain if typed else domain,
        sender_email=email, sender_domain=domain,
        records=_record_rows(records, checks, utcnow()), checks=_check_rows(checks),
        last_validated=human_time(tenant.last_validated_at) if tenant.last_validated_at else None,
        problems=refused, can_change=rights.change, can_validate=rights.validate,
    )
