"""The settings page's security as a reviewer checks it, over real HTTP(S) against `relay-admin serve`.

Sign-in throttled and audited; session cookies HttpOnly, SameSite=Strict, Secure (and `__Host-`)
over HTTPS; a CSRF token on every changing form; a strict CSP on every answer and no inline script or
style in any page; output escaped; nothing secret in a URL or the server's log; every refusal audited
with the acting user.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from admin.web.security import CSP
from tests.snapshot import Stores
from tests.web_server import PASSWORD, AdminServer, Site, owner_site, serving

SCRIPT_NAME = "<script>alert('x')</script> & Co"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web-security")
    site = owner_site(root, SCRIPT_NAME, backend_stores.new(root))
    yield site
    site.stop()
    backend_stores.discard(site.env["RELAY_DATABASE"])


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[AdminServer]:
    yield from serving(site)


def browser(server: AdminServer, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, follow_redirects=False, **kwargs)


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden {name} in the page"
    return match.group(1)


def sign_in(client: httpx.Client, user: str, password: str = PASSWORD, *, lang: str = "") -> httpx.Response:
    form = client.get("/login" + (f"?lang={lang}" if lang else ""))
    assert form.status_code == 200
    return client.post("/login", data={"username": user, "password": password, "csrf": hidden(form.text, "csrf")})


def audit(site: Site, *args: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(site.ok("audit", *args, "--json", "--as", "olivia"))
    return entries


def cookie(response: httpx.Response, name: str) -> str:
    [line] = [c for c in response.headers.get_list("set-cookie") if c.startswith(name + "=")]
    return line


# --- cookies ----------------------------------------------------------------------------------------


def test_the_session_cookie_is_httponly_and_samesite_strict(server: AdminServer) -> None:
    with browser(server) as client:
        signed = sign_in(client, "olivia")
        assert signed.status_code == 303 and signed.headers["location"] == "/tenants"
        line = cookie(signed, "relay_session")
        attributes = {part.strip().lower() for part in line.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
        assert client.get("/tenants/acme/settings").status_code == 200


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def test_over_https_cookies_are_secure_with_the_host_prefix(site: Site, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = AdminServer(site, RELAY_ADMIN_TLS_CERT=str(cert), RELAY_ADMIN_TLS_KEY=str(key))
    try:
        assert server.url.startswith("https://127.0.0.1:")
        with browser(server, verify=ssl.create_default_context(cafile=str(cert))) as client:
            form = client.get("/login")
            assert "__Host-relay_signin=" in form.headers["set-cookie"]
            assert form.headers["strict-transport-security"].startswith("max-age=")
            signed = sign_in(client, "olivia")
            assert signed.status_code == 303
            attributes = {p.strip().lower() for p in cookie(signed, "__Host-relay_session").split(";")[1:]}
            assert {"httponly", "samesite=strict", "secure", "path=/"} <= attributes
            assert client.get("/tenants/acme/settings").status_code == 200
    finally:
        server.stop()


def test_signing_out_ends_the_session_in_the_store(server: AdminServer) -> None:
    with browser(server) as client:
        sign_in(client, "olivia")
        stolen = client.cookies["relay_session"]
        page = client.get("/tenants/acme/settings")
        out = client.post("/logout", data={"csrf": hidden(page.text, "csrf")})
        assert out.status_code == 303 and out.headers["location"] == "/login"
    with browser(server, cookies={"relay_session": stolen}) as replay:
        again = replay.get("/tenants/acme/settings")
        assert again.status_code == 303 and again.headers["location"].startswith("/login?next=")


# --- CSRF -------------------------------------------------------------------------------------------


def test_a_form_without_its_csrf_token_is_refused_and_audited(server: AdminServer, site: Site) -> None:
    with browser(server) as client:
        sign_in(client, "olivia")
        form = {"name": "Hijacked", "email": "x@acme.test", "domain": "acme.test"}
        for token in (None, "", "forged-token"):
            data = form | ({"csrf": token} if token is not None else {})
            refused = client.post("/tenants/acme/settings", data=data)
            assert refused.status_code == 403, refused.text
        assert client.post("/tenants/acme/validate", data={}).status_code == 403
        assert client.post("/logout", data={}).status_code == 403
    assert json.loads(site.ok("tenant", "show", "acme", "--json", "--as", "olivia"))["name"] == "Acme BV"
    denied = [e for e in audit(site, "acme") if e["outcome"] == "denied" and "CSRF" in e["detail"]]
    assert {(e["actor"], e["action"]) for e in denied} == {("olivia", "tenant.set"), ("olivia", "validate")}


def test_the_sign_in_form_needs_its_token_too(server: AdminServer, site: Site) -> None:
    with browser(server) as client:
        refused = client.post("/login", data={"username": "olivia", "password": PASSWORD})
        assert refused.status_code == 403 and "relay_session" not in refused.headers.get("set-cookie", "")
    assert any(e["action"] == "signin" and "CSRF" in e["detail"] for e in audit(site))


def test_an_accountants_forged_post_is_refused_and_audited(server: AdminServer, site: Site) -> None:
    with browser(server) as client:
        sign_in(client, "carl")
        page = client.get("/tenants/acme/settings")
        assert page.status_code == 200 and 'id="save"' not in page.text and 'id="validate"' not in page.text
        csrf = hidden(page.text, "csrf")  # the sign-out form's: a valid token of carl's own session
        forged = client.post("/tenants/acme/settings",
                             data={"name": "Carl's BV", "email": "c@acme.test", "domain": "acme.test", "csrf": csrf})
        assert forged.status_code == 403 and "accountant" in forged.text
        assert client.post("/tenants/acme/validate", data={"csrf": csrf}).status_code == 403
    assert json.loads(site.ok("tenant", "show", "acme", "--json", "--as", "olivia"))["name"] == "Acme BV"
    denied = {(e["actor"], e["action"]) for e in audit(site, "acme") if e["outcome"] == "denied"}
    assert {("carl", "tenant.set"), ("carl", "validate")} <= denied


# --- the sign-in throttle -----------------------------------------------------------------------------


def test_wrong_passwords_slow_down_that_user_name(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.user("olivia", "owner")
    site.user("victim", "admin", actor="olivia")
    server = AdminServer(site)
    try:
        with browser(server) as client:
            for _ in range(5):
                wrong = sign_in(client, "victim", "not the password")
                assert wrong.status_code == 401 and "relay_session" not in wrong.headers.get("set-cookie", "")
            throttled = sign_in(client, "victim")  # the right password, too soon
            assert throttled.status_code == 429
            assert 25 <= int(throttled.headers["retry-after"]) <= 30
            assert "relay_session" not in throttled.headers.get("set-cookie", "")
            assert sign_in(client, "olivia").status_code == 303  # another name is not held up
        entries = [e for e in audit(site) if e["action"] == "signin"]
        assert [e["outcome"] for e in entries if e["actor"] == "victim"] == ["denied"] * 6
        assert "throttled" in entries[-2]["detail"] and "127.0.0.1" in entries[-2]["detail"]
        assert entries[-1]["actor"] == "olivia" and entries[-1]["outcome"] == "done"
        assert PASSWORD not in server.log and "not the password" not in server.log
    finally:
        server.stop()


def test_many_names_from_one_address_slow_down_that_address(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.user("olivia", "owner")
    server = AdminServer(site)
    try:
        with browser(server) as client:
            for n in range(20):
                assert sign_in(client, f"guess{n}", "wrong").status_code == 401
            assert sign_in(client, "olivia").status_code == 429
    finally:
        server.stop()


# --- headers, escaping, no script or style inline -----------------------------------------------------


def test_every_answer_has_the_strict_csp(server: AdminServer) -> None:
    assert "unsafe-inline" not in CSP and "default-src 'none'" in CSP and "frame-ancestors 'none'" in CSP
    with browser(server) as client:
        answers = [client.get("/login"), client.get("/tenants"), client.get("/static/relay.css"),
                   client.get("/nope"), client.get("/api/v1/tenants"), client.get("/api/openapi.json")]
        sign_in(client, "olivia")
        answers += [client.get("/tenants"), client.get("/tenants/acme/settings"), client.get("/tenants/nosuch/settings")]
        for response in answers:
            assert response.headers["content-security-policy"] == CSP, response.url
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
        assert answers[-2].headers["cache-control"] == "no-store"


def test_pages_have_no_inline_script_or_style_and_nothing_from_elsewhere(server: AdminServer) -> None:
    with browser(server) as client:
        pages = [client.get("/login").text]
        sign_in(client, "olivia")
        pages += [client.get(p).text for p in ("/tenants", "/tenants/acme/settings", "/tenants/new/settings",
                                               "/tenants/nosuch-but-no/settings")]
        bad = client.post("/tenants/acme/settings", data={"name": "", "email": "x", "domain": "",
                                                          "csrf": hidden(pages[2], "csrf")})
        assert bad.status_code == 422
        pages.append(bad.text)
    for html in pages:
        assert re.findall(r"<script(?![^>]*\bsrc=\"/static/)", html) == []
        assert "<style" not in html and " style=" not in html
        assert re.search(r"\son[a-z]+=", html) is None  # no inline event handlers
        assert re.findall(r'(?:src|href|action)="(?:https?:)?//', html) == []  # nothing from elsewhere


def test_a_script_like_tenant_name_is_text(server: AdminServer) -> None:
    with browser(server) as client:
        sign_in(client, "olivia")
        page = client.get("/tenants/xss/settings").text
        assert "<script>alert" not in page
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; Co" in page
        listing = client.get("/tenants").text
        assert "<script>alert" not in listing and "&lt;script&gt;" in listing
        probe = client.get('/tenants/"><script>alert(1)<%2Fscript>/settings')
        assert probe.status_code == 404 and "<script>alert(1)" not in probe.text


def test_after_sign_in_only_a_path_on_this_server(server: AdminServer) -> None:
    with browser(server) as client:
        for target, expected in (("/tenants/acme/settings", "/tenants/acme/settings"),
                                 ("//evil.example/x", "/tenants"), ("https://evil.example", "/tenants"),
                                 ("/\\evil.example", "/tenants")):
            client.cookies.clear()
            form = client.get("/login", params={"next": target})
            signed = client.post("/login", data={"username": "olivia", "password": PASSWORD,
                                                 "csrf": hidden(form.text, "csrf"), "next": target})
            assert signed.status_code == 303 and signed.headers["location"] == expected, target


def test_no_secret_in_a_url_or_the_log(server: AdminServer, site: Site) -> None:
    with browser(server) as client:
        form = client.get("/login", params={"next": "/tenants/acme/settings"})
        signed = client.post("/login", data={"username": "olivia", "password": PASSWORD,
                                             "csrf": hidden(form.text, "csrf"), "next": "/tenants/acme/settings"})
        session = client.cookies["relay_session"]
        page = client.get(signed.headers["location"])
        csrf = hidden(page.text, "csrf")
        assert 'method="post"' in page.text and 'method="get"' not in page.text.replace('action="/tenants/open"', "")
        for secret in (PASSWORD, session, csrf):
            assert secret not in signed.headers["location"]
            assert secret not in server.log
        assert session not in page.text  # HttpOnly cookie, not in the page either


def test_the_page_speaks_dutch_unless_asked_otherwise(server: AdminServer) -> None:
    with browser(server) as client:
        assert '<html lang="nl">' in client.get("/login").text
        assert '<html lang="nl">' in client.get("/login", headers={"Accept-Language": "de-DE,de;q=0.9"}).text
        assert '<html lang="fr">' in client.get("/login", headers={"Accept-Language": "de;q=1, fr-BE;q=0.8"}).text
        assert '<html lang="en">' in client.get("/login?lang=en", headers={"Accept-Language": "fr"}).text
        assert '<html lang="nl">' in client.get("/login", headers={"Accept-Language": "en;q=0, nl;q=0.1"}).text
        # Switching language on the sign-in form keeps where the user was going.
        form = client.get("/login", params={"next": "/tenants/acme/settings"}).text
        assert 'href="/login?next=%2Ftenants%2Facme%2Fsettings&amp;lang=fr"' in form


def test_an_unscoped_admin_opens_or_creates_a_tenant_by_its_id(server: AdminServer) -> None:
    with browser(server) as client:
        sign_in(client, "olivia")
        listing = client.get("/tenants")
        assert 'action="/tenants/open"' in listing.text
        opened = client.get("/tenants/open", params={"tenant": " NewCo "})
        assert opened.status_code == 303 and opened.headers["location"] == "/tenants/newco/settings"
        new = client.get("/tenants/newco/settings")
        assert new.status_code == 200 and 'data-status="new"' in new.text and 'id="records"' not in new.text
        client.cookies.clear()
        sign_in(client, "carl")
        assert 'action="/tenants/open"' not in client.get("/tenants").text
        assert client.get("/tenants/newco/settings").status_code == 404  # an accountant creates nothing
