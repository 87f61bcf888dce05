"""The JSON API over real HTTP against `relay-admin serve`: every route, every status, the CLI's JSON.

One server per module on a free port, its store set up with the CLI: an owner (olivia), an admin
(ada) and an accountant (carl) for every tenant, and an admin (sam) and an accountant (nina) of acme
only. Validation asks an NSD on loopback that serves acme.test's records.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from admin.export_texts import LANGUAGES
from tests.snapshot import Stores
from tests.web_server import AdminServer, Site, serving

ROUTES = {
    ("get", "/api/v1/tenants"),
    ("get", "/api/v1/tenants/{tenant}"),
    ("put", "/api/v1/tenants/{tenant}"),
    ("get", "/api/v1/tenants/{tenant}/records"),
    ("get", "/api/v1/tenants/{tenant}/export.xlsx"),
    ("post", "/api/v1/tenants/{tenant}/validate"),
    ("post", "/api/v1/tenants/{tenant}/rotate-key"),
    ("get", "/api/v1/tenants/{tenant}/audit"),
}
SENDER = {"name": "Shop BV", "email": "info@shop.test", "domain": "shop.test"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web-api")
    site = Site(root, env={"RELAY_DATABASE": backend_stores.new(root)})
    site.user("olivia", "owner")
    site.tenant("acme", "acme.test", name="Acme BV")
    site.tenant("other", "other.test", name="Other BV")
    site.user("ada", "admin", actor="olivia")
    site.user("carl", "accountant", actor="olivia")
    site.user("sam", "admin", "acme", actor="olivia")
    site.user("nina", "accountant", "acme", actor="olivia")
    site.serve_dns({"acme.test": site.bind("acme")})
    yield site
    site.stop()
    backend_stores.discard(site.env["RELAY_DATABASE"])


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[AdminServer]:
    yield from serving(site)


@pytest.fixture(scope="module")
def http(server: AdminServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def auth(site: Site, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {site.tokens[user]}"}


def error(response: httpx.Response) -> dict[str, Any]:
    """The error's field and message; a `code` beside them (422 from an input check) must be a word."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) - {"code"} == {"field", "message"}, body
    detail: dict[str, Any] = dict(body["error"])
    code = detail.pop("code", "")
    assert isinstance(code, str) and re.fullmatch(r"[a-z_]*", code), body
    return detail


def cli_json(site: Site, *args: str) -> Any:
    return json.loads(site.ok(*args, "--json"))


def cli_error(site: Site, *args: str) -> str:
    """The CLI's one line for a refused command, without the program name."""
    result = site.cli(*args)
    assert result.code != 0 and result.err.count("\n") == 1, result
    return result.err.strip().removeprefix("relay-admin: ")


# --- the document ----------------------------------------------------------------------------------


def test_the_openapi_document_lists_every_route(http: httpx.Client) -> None:
    from admin.web.api import router

    response = http.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    listed = {(method, path) for path, item in document["paths"].items() for method in item}
    assert listed == ROUTES
    served = {(method.lower(), str(route.path)) for route in router.routes
              for method in getattr(route, "methods", ())}
    assert served == ROUTES  # the document and the server agree: no route left out
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert {"401", "403", "404", "422"} <= set(operation["responses"]), (method, path)
            assert operation["security"] == [{"token": []}], (method, path)
            assert operation["description"].startswith("CLI twin: `relay-admin "), (method, path)
    assert document["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    body = document["paths"]["/api/v1/tenants/{tenant}"]["put"]["requestBody"]
    assert set(body["content"]["application/json"]["schema"]["required"]) == {"name", "email", "domain"}
    assert "/api/openapi.json" not in document["paths"] and "/tenants/{tenant}/settings" not in document["paths"]


def test_no_interactive_docs_that_would_load_a_cdn(http: httpx.Client) -> None:
    assert http.get("/docs").status_code == 404 and http.get("/redoc").status_code == 404


# --- 401 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_every_route_wants_a_token(http: httpx.Client, site: Site, method: str, path: str) -> None:
    url = path.replace("{tenant}", "acme")
    for headers in ({}, {"Authorization": "Bearer rat_abcdefgh_not-a-real-token"},
                    {"Authorization": f"Basic {site.tokens['olivia']}"}):
        response = http.request(method, url, headers=headers, json=SENDER if method == "put" else None)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert error(response)["field"] is None
    # A token in the URL is never taken (it would end up in logs and browser history).
    response = http.request(method, url + f"?token={site.tokens['olivia']}")
    assert response.status_code == 401


def test_a_revoked_token_is_401_at_once(http: httpx.Client, site: Site) -> None:
    token = json.loads(site.ok("token", "add", "--user", "carl", "--json", "--as", "olivia"))["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert http.get("/api/v1/tenants", headers=headers).status_code == 200
    site.ok("token", "revoke", token.split("_")[1], "--as", "olivia")
    assert http.get("/api/v1/tenants", headers=headers).status_code == 401


# --- reading: the CLI's JSON, in scope ---------------------------------------------------------------


def test_list_is_tenant_list_json_within_the_scope(http: httpx.Client, site: Site) -> None:
    everyone = http.get("/api/v1/tenants", headers=auth(site, "carl"))
    assert everyone.status_code == 200
    assert everyone.json() == cli_json(site, "tenant", "list", "--as", "carl")
    assert {"acme", "other"} <= {t["tenant"] for t in everyone.json()}
    scoped = http.get("/api/v1/tenants", headers=auth(site, "nina"))
    assert [t["tenant"] for t in scoped.json()] == ["acme"]
    assert scoped.json() == cli_json(site, "tenant", "list", "--as", "nina")


def test_show_is_tenant_show_json(http: httpx.Client, site: Site) -> None:
    response = http.get("/api/v1/tenants/acme", headers=auth(site, "nina"))
    assert response.status_code == 200
    assert response.json() == cli_json(site, "tenant", "show", "acme", "--as", "nina")
    assert response.json()["name"] == "Acme BV" and response.json()["status"] in ("pending", "verified")


def test_records_are_records_json(http: httpx.Client, site: Site) -> None:
    response = http.get("/api/v1/tenants/acme/records", headers=auth(site, "carl"))
    assert response.status_code == 200
    assert response.json() == cli_json(site, "records", "acme", "--as", "carl")
    assert [r["purpose"] for r in response.json()] == ["dkim", "return-path", "dmarc"]


@pytest.mark.parametrize("path", ["", "/records", "/export.xlsx", "/audit"])
def test_out_of_scope_is_the_same_404_as_unknown_and_audited(http: httpx.Client, site: Site,
                                                              path: str) -> None:
    out_of_scope = http.get(f"/api/v1/tenants/other{path}", headers=auth(site, "sam"))
    unknown = http.get(f"/api/v1/tenants/nosuch{path}", headers=auth(site, "sam"))
    assert out_of_scope.status_code == unknown.status_code == 404
    assert error(out_of_scope) == {"field": "tenant", "message": "no tenant 'other'"}
    assert error(unknown) == {"field": "tenant", "message": "no tenant 'nosuch'"}
    assert "relay.db" not in out_of_scope.text and "/" not in error(out_of_scope)["message"]
    denied = [e for e in cli_json(site, "audit", "other", "--as", "olivia")
              if e["actor"] == "sam" and e["outcome"] == "denied"]
    assert denied, "a probe outside the scope is audited"


def test_an_unscoped_user_gets_404_for_an_unknown_tenant(http: httpx.Client, site: Site) -> None:
    for method, path in sorted(ROUTES - {("get", "/api/v1/tenants"), ("put", "/api/v1/tenants/{tenant}")}):
        response = http.request(method, path.replace("{tenant}", "nosuch"), headers=auth(site, "olivia"))
        assert response.status_code == 404, (method, path)
        assert error(response)["field"] == "tenant"


# --- PUT: create, change, refuse --------------------------------------------------------------------


def test_put_creates_with_201_then_changes_with_200(http: httpx.Client, site: Site) -> None:
    created = http.put("/api/v1/tenants/shop", headers=auth(site, "ada"), json=SENDER)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/v1/tenants/shop"
    body = created.json()
    assert body["key_issued"] is True and body["status"] == "pending" and body["email"] == "info@shop.test"
    assert "key_file" not in body  # the server's file system is none of the caller's business
    assert body["warnings"] == []  # info@shop.test is at the domain itself
    shown = {k: v for k, v in body.items() if k not in ("key_issued", "warnings")}
    assert shown == cli_json(site, "tenant", "show", "shop", "--as", "ada")
    again = http.put("/api/v1/tenants/shop", headers=auth(site, "ada"), json=SENDER)
    assert again.status_code == 200 and again.json()["key_issued"] is False
    assert again.json()["selector"] == body["selector"]
    renamed = http.put("/api/v1/tenants/shop", headers=auth(site, "ada"), json=SENDER | {"name": "Shop NV"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Shop NV"
    assert renamed.json()["selector"] == body["selector"] and renamed.json()["key_issued"] is False
    moved = http.put("/api/v1/tenants/shop", headers=auth(site, "ada"),
                     json=SENDER | {"email": "post@mail.shop.test", "return_path": "mb"})
    assert moved.status_code == 200 and moved.json()["key_issued"] is True
    assert moved.json()["return_path_host"] == "mb.shop.test"
    trail = [(e["actor"], e["action"], e["outcome"]) for e in cli_json(site, "audit", "shop", "--as", "olivia")]
    assert trail.count(("ada", "tenant.set", "done")) == 4


def test_a_scoped_admin_changes_its_tenant_but_never_creates_one(http: httpx.Client, site: Site) -> None:
    mine = http.put("/api/v1/tenants/acme", headers=auth(site, "sam"),
                    json={"name": "Acme B.V.", "email": "info@acme.test", "domain": "acme.test"})
    assert mine.status_code == 200 and mine.json()["name"] == "Acme B.V." and mine.json()["key_issued"] is False
    new = http.put("/api/v1/tenants/newco", headers=auth(site, "sam"), json=SENDER)
    assert new.status_code == 404 and error(new)["field"] == "tenant"
    assert http.get("/api/v1/tenants/newco", headers=auth(site, "olivia")).status_code == 404
    other = http.put("/api/v1/tenants/other", headers=auth(site, "sam"), json=SENDER)
    assert other.status_code == 404
    assert http.get("/api/v1/tenants/other", headers=auth(site, "olivia")).json()["name"] == "Other BV"


BAD_INPUT = [
    ("name", {"name": ""}, ["--name", ""]),
    ("name", {"name": "Acme\r\nBcc: x@evil.test"}, ["--name", "Acme\r\nBcc: x@evil.test"]),
    ("email", {"email": "Acme <info@shop.test>"}, ["--email", "Acme <info@shop.test>"]),
    ("email", {"email": "info@elsewhere.test"}, ["--email", "info@elsewhere.test"]),
    ("email", {"email": "not an address"}, ["--email", "not an address"]),
    ("domain", {"domain": "https://shop.test/"}, ["--domain", "https://shop.test/"]),
    ("domain", {"domain": "shop"}, ["--domain", "shop"]),
    ("return_path", {"return_path": "_dmarc"}, ["--return-path", "_dmarc"]),
]


@pytest.mark.parametrize(("field", "change", "flag"), BAD_INPUT, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_INPUT)])
def test_bad_input_is_422_naming_the_field_with_the_cli_line(http: httpx.Client, site: Site, field: str,
                                                             change: dict[str, str], flag: list[str]) -> None:
    response = http.put("/api/v1/tenants/shop2", headers=auth(site, "ada"), json=SENDER | change)
    assert response.status_code == 422, response.text
    args = {"--name": SENDER["name"], "--email": SENDER["email"], "--domain": SENDER["domain"]}
    args[flag[0]] = flag[1]
    line = cli_error(site, "tenant", "set", "shop2", *[x for kv in args.items() for x in kv], "--as", "ada")
    assert error(response) == {"field": field, "message": line}
    assert http.get("/api/v1/tenants/shop2", headers=auth(site, "ada")).status_code == 404  # nothing made


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", None), (b"[1, 2]", None), (b'{"name": "A", "email": "a@b.test"}', "domain"),
    (b'{"name": "A", "email": "a@b.test", "domain": "b.test", "status": "verified"}', "status"),
    (b'{"name": 1, "email": "a@b.test", "domain": "b.test"}', "name"),
])
def test_a_malformed_body_is_422(http: httpx.Client, site: Site, body: bytes, field: str | None) -> None:
    response = http.put("/api/v1/tenants/shop3", headers=auth(site, "ada") | {"Content-Type": "application/json"},
                        content=body)
    assert response.status_code == 422 and error(response)["field"] == field, response.text


def test_statuses_come_in_spec_order_401_404_403_422(http: httpx.Client, site: Site) -> None:
    bad = {"name": "", "email": "nope", "domain": "x"}
    assert http.put("/api/v1/tenants/other", json=bad).status_code == 401
    assert http.put("/api/v1/tenants/other", headers=auth(site, "nina"), json=bad).status_code == 404
    assert http.put("/api/v1/tenants/acme", headers=auth(site, "nina"), content=b"{not json").status_code == 403
    forbidden = http.put("/api/v1/tenants/acme", headers=auth(site, "carl"), json=bad)
    assert forbidden.status_code == 403 and error(forbidden)["field"] is None
    assert error(forbidden)["message"] == cli_error(site, "tenant", "set", "acme", "--name", "", "--email",
                                                    "nope", "--domain", "x", "--as", "carl")
    assert http.put("/api/v1/tenants/acme", headers=auth(site, "ada"), json=bad).status_code == 422
    denied = [e for e in cli_json(site, "audit", "acme", "--as", "olivia")
              if (e["actor"], e["action"], e["outcome"]) == ("carl", "tenant.set", "denied")]
    assert denied, "a refusal is audited with the acting user"


def test_a_body_too_large_is_refused(http: httpx.Client, site: Site) -> None:
    response = http.put("/api/v1/tenants/shop", headers=auth(site, "ada"),
                        json=SENDER | {"name": "x" * 100_000})
    assert response.status_code == 413


# --- export -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["nl", "en", "fr"])
def test_export_is_the_excel_file_in_the_language_asked(http: httpx.Client, site: Site, lang: str) -> None:
    response = http.get(f"/api/v1/tenants/acme/export.xlsx?lang={lang}", headers=auth(site, "nina"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert response.headers["content-disposition"] == f'attachment; filename="acme-dns-{lang}.xlsx"'
    workbook = load_workbook(io.BytesIO(response.content))
    texts = LANGUAGES[lang]
    assert workbook.sheetnames == [texts.records_sheet, texts.instructions_sheet]
    cells = {str(c.value) for row in workbook[texts.records_sheet].iter_rows() for c in row if c.value}
    records = cli_json(site, "records", "acme", "--as", "nina")
    assert {r["value"] for r in records} <= cells
    assert texts.headers[0] in cells


def test_export_defaults_to_dutch_and_refuses_another_language(http: httpx.Client, site: Site) -> None:
    dutch = http.get("/api/v1/tenants/acme/export.xlsx", headers=auth(site, "carl"))
    assert load_workbook(io.BytesIO(dutch.content)).sheetnames[0] == LANGUAGES["nl"].records_sheet
    german = http.get("/api/v1/tenants/acme/export.xlsx?lang=de", headers=auth(site, "carl"))
    assert german.status_code == 422 and error(german)["field"] == "lang"


# --- validate against NSD -----------------------------------------------------------------------------


def test_validate_against_nsd_verifies_the_tenant(http: httpx.Client, site: Site) -> None:
    assert http.post("/api/v1/tenants/acme/validate", headers=auth(site, "nina")).status_code == 403
    started = time.monotonic()
    response = http.post("/api/v1/tenants/acme/validate", headers=auth(site, "sam"))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["verified"] is True and report["status"] == "verified"
    assert [c["status"] for c in report["checks"]] == ["ok", "ok", "ok"]
    assert set(report["checks"][0]) >= {"purpose", "type", "name", "status", "expected", "found", "diagnosis"}
    assert time.monotonic() - started < 10
    shown = http.get("/api/v1/tenants/acme", headers=auth(site, "nina")).json()
    assert shown["status"] == "verified" and [c["status"] for c in shown["checks"]] == ["ok", "ok", "ok"]
    audit = cli_json(site, "audit", "acme", "--as", "olivia")
    assert any(e["actor"] == "sam" and e["action"] == "validate" and e["outcome"] == "done" for e in audit)


def test_validate_a_tenant_whose_records_are_missing_is_200_not_verified(http: httpx.Client,
                                                                         site: Site) -> None:
    site.ok("tenant", "set", "bare", "--name", "Bare", "--email", "a@bare.test", "--domain", "bare.test",
            "--as", "olivia")
    response = http.post("/api/v1/tenants/bare/validate", headers=auth(site, "ada"))
    assert response.status_code == 200
    assert response.json()["verified"] is False and response.json()["status"] == "pending"


# --- rotate-key and audit -----------------------------------------------------------------------------


def test_rotate_key_issues_a_next_key_then_409_until_it_is_seen(http: httpx.Client, site: Site) -> None:
    site.ok("tenant", "set", "turn", "--name", "Turn", "--email", "a@turn.test", "--domain", "turn.test",
            "--as", "olivia")
    assert http.post("/api/v1/tenants/turn/rotate-key", headers=auth(site, "carl")).status_code == 403
    response = http.post("/api/v1/tenants/turn/rotate-key", headers=auth(site, "ada"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "next" and body["record"]["state"] == "next" and "key_file" not in body
    assert body["record"]["name"] == f"{body['selector']}._domainkey.turn.test"
    states = [r.get("state") for r in cli_json(site, "records", "turn", "--as", "ada")]
    assert states[:2] == ["active", "next"]
    again = http.post("/api/v1/tenants/turn/rotate-key", headers=auth(site, "ada"))
    assert again.status_code == 409 and error(again)["field"] == "tenant"
    assert "already has a next key" in error(again)["message"]


def test_audit_is_audit_json_and_open_to_an_accountant(http: httpx.Client, site: Site) -> None:
    response = http.get("/api/v1/tenants/acme/audit", headers=auth(site, "nina"))
    assert response.status_code == 200
    entries = response.json()
    assert entries == cli_json(site, "audit", "acme", "--as", "nina")
    assert all(set(e) == {"time", "actor", "action", "tenant", "outcome", "detail"} for e in entries)
    assert {"done", "denied"} <= {e["outcome"] for e in entries}


# --- what an error never says, and what the server never logs ---------------------------------------


def test_unknown_routes_and_methods_answer_in_the_api_shape(http: httpx.Client, site: Site) -> None:
    missing = http.get("/api/v1/nothing", headers=auth(site, "olivia"))
    assert missing.status_code == 404 and error(missing)["message"] == "no such page or route"
    method = http.delete("/api/v1/tenants/acme", headers=auth(site, "olivia"))
    assert method.status_code == 405 and error(method)["message"] == "method not allowed"


def test_the_server_log_holds_no_token(server: AdminServer, site: Site, http: httpx.Client) -> None:
    http.get("/api/v1/tenants", headers=auth(site, "olivia"))
    log = server.log
    assert "GET /api/v1/tenants HTTP/1.1" in log  # the access log is there, on stderr
    for token in site.tokens.values():
        assert token not in log and token.split("_")[2] not in log
    assert "Traceback" not in log
