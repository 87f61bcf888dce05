"""The settings page and sign-in: plain HTML forms that work without JavaScript, in nl (default), en, fr.

    GET  /login                     sign-in form (username, password)
    POST /login                     sign in: throttled, audited; 303 to where the user was going
    POST /logout                    sign out
    GET  /tenants                   the tenants in the user's scope (one tenant: straight to its page)
    GET  /tenants/{t}/settings      the seed's screen: three fields, records, Validate, checks
    POST /tenants/{t}/settings      Save: 303 back to the page, or the page again (422) with the errors
    POST /tenants/{t}/validate      Validate: runs the check, 303 back to the page's results
    GET  /tenants/{t}/export.xlsx   the Excel hand-over in the page's language

Every POST carries the session's CSRF token; every change goes through `admin.services`, as the CLI's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from admin import inputs, services
from admin.auth import authenticate_password
from admin.context import Context, UsageError
from admin.roles import may
from admin.web import security, sessions
from admin.web.api import xlsx_response
from admin.web.errors import WebError, answers, is_unknown_tenant
from admin.web.i18n import LANGUAGE_NAMES, LANGUAGES, Translator, negotiate
from admin.web.security import safe_next, same_token
from admin.web.sessions import SESSION_COOKIE, SIGNIN_COOKIE, SignedIn
from admin.web.state import WebState, context_for, web_state
from admin.web.views import page_words, problem_words, settings_view
from relay.core.store import StoreError, utcnow
from relay.domains.validation import COULD_NOT_CHECK, ValidationReport

router = APIRouter(include_in_schema=False)

SAVED = ("created", "saved", "renamed", "unchanged")
VALIDATED = ("verified", "not_verified", "could_not_check", "skipped", "discarded")
ANONYMOUS = "(anonymous)"


@cache
def environment() -> jinja2.Environment:
    """The templates, autoescaped: a tenant named `<script>` is text on the page."""
    return jinja2.Environment(loader=jinja2.PackageLoader("admin.web", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


class SignInRequired(Exception):
    """No live session: the page redirects to /login and comes back afterwards."""

    def __init__(self, back: str) -> None:
        super().__init__(back)
        self.back = back


@dataclass(frozen=True)
class Page:
    """One request's page: its language, the signed-in user (if any), and how to render."""

    request: Request
    lang: str
    explicit: bool  # `?lang=` was given: links and redirects keep it
    signed: SignedIn | None

    @classmethod
    def of(cls, request: Request, *, signed: SignedIn | None = None) -> "Page":
        lang, explicit = negotiate(request.query_params.get("lang"), request.headers.get("accept-language"))
        return cls(request, lang, explicit, signed)

    @property
    def t(self) -> Translator:
        return Translator(self.lang)

    def url(self, path: str, **params: str) -> str:
        """A link on this server that keeps the language the user chose."""
        query = {"lang": self.lang} if self.explicit else {}
        query.update(params)
        return f"{path}?{urlencode(query)}" if query else path

    def language_links(self) -> list[tuple[str, str, str]]:
        """(code, name, this page in that language): the other query parameters kept (`next`)."""
        kept = [(k, v) for k, v in self.request.query_params.multi_items() if k not in ("lang", "done")]
        path = self.request.url.path
        return [(code, LANGUAGE_NAMES[code], f"{path}?{urlencode(kept + [('lang', code)])}")
                for code in LANGUAGES]

    def render(self, template: str, status: int = 200, headers: dict[str, str] | None = None,
               **values: Any) -> HTMLResponse:
        t = self.t
        user = self.signed.user if self.signed else None
        html = environment().get_template(template).render(
            t=t, lang=self.lang, url=self.url, user=user,
            csrf=self.signed.session.csrf_token if self.signed else "",
            languages=self.language_links(), lang_param=self.lang if self.explicit else "",
            page_words=lambda text: page_words(text, t),
            problem_words=lambda problem: problem_words(problem, t), **values)
        return HTMLResponse(html, status_code=status, headers=headers)


def tenant_path(tenant_id: str, tail: str = "settings") -> str:
    return f"/tenants/{quote(tenant_id, safe='')}/{tail}"


def signed_in(request: Request) -> tuple[Page, SignedIn, Context]:
    """The request's session, user and services entry, or SignInRequired."""
    state = web_state(request)
    signed = sessions.current(state.store, request, utcnow())
    if signed is None:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(back)
    return Page.of(request, signed=signed), signed, context_for(state, signed.user)


def require_csrf(ctx: Context, signed: SignedIn, given: str, *, action: str, tenant: str | None) -> None:
    """A changing form must carry the session's CSRF token; a form without it is refused and audited."""
    if not same_token(signed.session.csrf_token, given):
        ctx.audit(action, tenant=tenant, outcome="denied", actor=signed.user.name,
                  detail="form without a valid CSRF token (not sent by this site's page)")
        raise WebError(403, "the form has no valid CSRF token: reload the page and try again",
                       reason="csrf")


# --- sign-in ----------------------------------------------------------------------------------------

@router.get("/")
def home(request: Request) -> RedirectResponse:
    return RedirectResponse(Page.of(request).url("/tenants"), status_code=303)


def _login_page(page: Page, *, status: int = 200, error: str = "", wait: int = 0, username: str = "",
                back: str = "") -> HTMLResponse:
    token = security.new_token()
    headers = {"Retry-After": str(wait)} if wait else None
    response = page.render("login.html", status, headers, signin_csrf=token, error=error, wait=wait,
                           username=username, back=back)
    sessions.set_cookie(response, page.request, SIGNIN_COOKIE, token, sessions.SIGNIN_LIFETIME)
    return response


@router.get("/login")
def login_form(request: Request, next: Annotated[str, Query()] = "") -> Response:
    page = Page.of(request)
    if sessions.current(web_state(request).store, request, utcnow()) is not None:
        return RedirectResponse(safe_next(next, page.url("/tenants")), status_code=303)
    return _login_page(page, back=safe_next(next, ""))


def _actor(typed: str) -> str:
    """A typed user name as the audit's actor: itself when it could be a name, else anonymous."""
    return typed if inputs.IDENTIFIER.fullmatch(typed) else ANONYMOUS


@router.post("/login")
def login(request: Request, username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
          csrf: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "") -> Response:
    page = Page.of(request)
    state = web_state(request)
    ctx = Context(settings=state.settings, store=state.store, actor_name=None)
    address = request.client.host if request.client else "unknown"
    back = safe_next(next, "")
    if not same_token(request.cookies.get(sessions.cookie_name(request, SIGNIN_COOKIE)), csrf):
        ctx.audit("signin", outcome="denied", actor=_actor(username),
                  detail=f"sign-in form without a valid CSRF token from {address}")
        return _login_page(page, status=403, error="expired", username=username, back=back)
    now = utcnow()
    wait = _throttle(state, username, address, now)
    if wait.seconds:
        ctx.audit("signin", outcome="denied", actor=_actor(username),
                  detail=f"throttled: {wait.failures} failed sign-ins within 15 minutes; "
                         f"next attempt in {wait.seconds} s; from {address}")
        return _login_page(page, status=429, error="throttled", wait=wait.seconds, username=username,
                           back=back)
    user = authenticate_password(state.store, username, password)
    if user is None:
        forget = now - security.WINDOW
        state.store.add_signin_failure(security.user_key(username), now, forget_before=forget)
        state.store.add_signin_failure(security.address_key(address), now, forget_before=forget)
        ctx.audit("signin", outcome="denied", actor=_actor(username),
                  detail=f"wrong user name or password from {address}")
        return _login_page(page, status=401, error="wrong", username=username, back=back)
    state.store.clear_signin_failures(security.user_key(username))
    session_id, _ = sessions.start(state.store, user, now)
    ctx.audit("signin", actor=user.name, detail=f"signed in from {address}")
    response = RedirectResponse(back or page.url("/tenants"), status_code=303)
    sessions.set_cookie(response, request, SESSION_COOKIE, session_id, sessions.LIFETIME)
    sessions.clear_cookie(response, request, SIGNIN_COOKIE)
    return response


def _throttle(state: WebState, username: str, address: str, now: datetime) -> security.Wait:
    since = now - security.WINDOW
    by_user = security.wait_for(state.store.signin_failures(security.user_key(username), since),
                                security.USER_LIMIT, now)
    by_address = security.wait_for(state.store.signin_failures(security.address_key(address), since),
                                   security.ADDRESS_LIMIT, now)
    return max(by_user, by_address, key=lambda wait: wait.seconds)


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    page, signed, ctx = signed_in(request)
    require_csrf(ctx, signed, csrf, action="signout", tenant=None)
    sessions.end(ctx.store, request)
    ctx.audit("signout", actor=signed.user.name)
    response = RedirectResponse(page.url("/login"), status_code=303)
    sessions.clear_cookie(response, request, SESSION_COOKIE)
    return response


# --- tenants ----------------------------------------------------------------------------------------

@router.get("/tenants")
def tenants(request: Request) -> Response:
    page, signed, ctx = signed_in(request)
    with answers():
        items = services.list_tenants(ctx)
    if signed.user.scoped and len(items) == 1:
        return RedirectResponse(page.url(tenant_path(items[0]["tenant"])), status_code=303)
    may_create = not signed.user.scoped and may(signed.user.role, "tenant.set")
    return page.render("tenants.html", tenants=items, may_create=may_create)


@router.get("/tenants/open")
def open_tenant(request: Request, tenant: Annotated[str, Query()] = "") -> Response:
    page, _, _ = signed_in(request)
    return RedirectResponse(page.url(tenant_path(tenant.strip().lower() or "-")), status_code=303)


@router.get("/tenants/{tenant}/settings")
def settings(request: Request, tenant: str, done: Annotated[str, Query()] = "") -> Response:
    page, _, ctx = signed_in(request)
    with answers():
        view = settings_view(ctx, tenant)
    return page.render("settings.html", view=view, done=done if done in SAVED + VALIDATED else "",
                       validation_outcomes=VALIDATED,
                       export_url=page.url(tenant_path(tenant, "export.xlsx"), lang=page.lang))


@router.post("/tenants/{tenant}/settings")
def save(request: Request, tenant: str, name: Annotated[str, Form()] = "",
         email: Annotated[str, Form()] = "", domain: Annotated[str, Form()] = "",
         csrf: Annotated[str, Form()] = "") -> Response:
    page, signed, ctx = signed_in(request)
    require_csrf(ctx, signed, csrf, action="tenant.set", tenant=tenant)
    typed = services.SenderInput(name=name, email=email, domain=domain)
    problems: list[UsageError] = []
    with answers():
        try:
            services.may_set_sender(ctx, tenant)  # 404, 403 before the input is judged
            problems = services.sender_problems(typed)
            if not problems:
                change = services.set_sender(ctx, tenant, typed)
        except UsageError as exc:
            if is_unknown_tenant(exc):
                raise
            problems = [exc]
        if problems:
            view = settings_view(ctx, tenant, typed=typed, problems=problems)
    if problems:
        return page.render("settings.html", 422, view=view, done="", validation_outcomes=VALIDATED,
                           export_url=page.url(tenant_path(tenant, "export.xlsx"), lang=page.lang))
    done = ("created" if change.created else "unchanged" if not change.changed
            else "saved" if change.key_issued else "renamed")
    return RedirectResponse(page.url(tenant_path(change.tenant.id), done=done), status_code=303)


def outcome(report: ValidationReport) -> str:
    """The page's one-word summary of a validation (its `done` message)."""
    if report.skipped:
        return "skipped"
    if report.discarded:
        return "discarded"
    if report.outcome == COULD_NOT_CHECK:
        return "could_not_check"
    return "verified" if report.verified else "not_verified"


@router.post("/tenants/{tenant}/validate")
def validate(request: Request, tenant: str, csrf: Annotated[str, Form()] = "") -> Response:
    page, signed, ctx = signed_in(request)
    require_csrf(ctx, signed, csrf, action="validate", tenant=tenant)
    with answers():
        report = services.validate(ctx, tenant)
    return RedirectResponse(page.url(tenant_path(tenant), done=outcome(report)) + "#checks",
                            status_code=303)


@router.get("/tenants/{tenant}/export.xlsx")
def export(request: Request, tenant: str) -> Response:
    page, _, ctx = signed_in(request)
    with answers():
        found, workbook = services.export_workbook(ctx, tenant, page.lang)
    return xlsx_response(workbook, f"{found.id}-dns-{page.lang}.xlsx")


# --- errors -----------------------------------------------------------------------------------------

def error_page(request: Request, error: WebError) -> HTMLResponse:
    """A WebError as a page in the user's language (the services' own line shown as it is)."""
    try:
        signed = sessions.current(web_state(request).store, request, utcnow())
    except StoreError:  # the error may be the store's own: show the page without the user
        signed = None
    page = Page.of(request, signed=signed)
    return page.render("error.html", error.status, error.headers or None, error=error)


def sign_in_redirect(request: Request, exc: SignInRequired) -> RedirectResponse:
    page = Page.of(request)
    return RedirectResponse(page.url("/login", next=exc.back), status_code=303)
