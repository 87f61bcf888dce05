"""The settings page explains a refused input in its own language, over real HTTP against `relay-admin serve`.

The Dutch and French pages say the whole explanation in Dutch or French (with the page's field names),
not the CLI's English line under a translated heading; the values typed stay escaped; the JSON API
keeps the CLI's line and adds the code.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.test_web_security import browser, hidden, sign_in
from tests.web_server import AdminServer, Site, serving

GOOD = {"name": "Acme BV", "email": "info@acme.test", "domain": "acme.test"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = Site(tmp_path_factory.mktemp("web-input-errors"))
    site.user("olivia", "owner")
    site.tenant("acme", "acme.test", name="Acme BV")
    yield site
    site.stop()


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[AdminServer]:
    yield from serving(site)


def refused(client: httpx.Client, lang: str, **typed: str) -> str:
    """Post the form with `typed` in place of good values; the 422 page's HTML."""
    page = client.get(f"/tenants/acme/settings?lang={lang}")
    answer = client.post(f"/tenants/acme/settings?lang={lang}",
                         data=GOOD | typed | {"csrf": hidden(page.text, "csrf")})
    assert answer.status_code == 422, answer.text
    assert f'<html lang="{lang}">' in answer.text
    return answer.text


def said(page: str, field: str | None) -> str:
    """What the page says about `field` (None: the form's message about no one field), as read."""
    pattern = rf'<p class="error" id="{field}-error">(.*?)</p>' if field else r'<p class="error">(.*?)</p>'
    match = re.search(pattern, page, re.DOTALL)
    assert match, f"no error shown for {field}"
    shown = re.sub(r'<span class="visually-hidden">.*?</span>', "", match.group(1))  # "Fout: ", for screen readers
    return html.unescape(re.sub(r"<[^>]+>", "", shown))


# (lang, what is typed, {field: what the page says}, the CLI's English words that must not show)
TRANSLATED = [
    ("nl", {"name": "Acme\r\nBcc: spy@evil.test", "email": "Acme <info@acme.test>", "domain": "https://acme.test/"}, {
        "name": "Deze naam kan niet: er staat een stuurteken in (U+000D); gebruik gewone tekst",
        "email": "Dit e-mailadres kan niet: 'Acme <info@acme.test>' bevat een naam; zet de naam bij \u201cNaam\u201d "
                 "en vul bij \u201cE-mailadres\u201d alleen het adres in, bijvoorbeeld 'info@acme.test'",
        "domain": "Dit domein kan niet: 'https://acme.test/' is een webadres (URL); vul alleen het domein in, "
                  "bijvoorbeeld acme.test",
    }, ["use plain text", "has a name in it", "is a web address"]),
    ("fr", {"name": "Acme\r\nBcc: spy@evil.test", "email": "Acme <info@acme.test>", "domain": "https://acme.test/"}, {
        "name": "Ce nom ne convient pas\u00a0: le nom contient un caract\u00e8re de contr\u00f4le (U+000D)\u00a0; "
                "saisissez du texte simple",
        "email": "Cette adresse e-mail ne convient pas\u00a0: 'Acme <info@acme.test>' contient un nom\u00a0; mettez "
                 "le nom dans \u201cNom\u201d et indiquez seulement l\u2019adresse dans \u201cAdresse e-mail\u201d, "
                 "par exemple 'info@acme.test'",
        "domain": "Ce domaine ne convient pas\u00a0: 'https://acme.test/' est une adresse web (URL)\u00a0; indiquez "
                  "seulement le domaine, par exemple acme.test",
    }, ["use plain text", "has a name in it", "is a web address"]),
    ("nl", {"name": "=?utf-8?q?Soci=C3=A9t=C3=A9?=", "domain": "acme..test"}, {
        "name": "Deze naam kan niet: '=?utf-8?q?Soci=C3=A9t=C3=A9?=' lijkt MIME-gecodeerde tekst (RFC 2047); "
                "typ de naam zelf, bijvoorbeeld 'Soci\u00e9t\u00e9'",
        "domain": "Dit domein kan niet: 'acme..test' heeft een leeg deel (twee punten na elkaar, of een punt "
                  "aan het begin)",
    }, ["looks like MIME-encoded text", "has an empty part"]),
    ("fr", {"name": "A" * 101, "email": "jan jansen@acme.test"}, {
        "name": "Ce nom ne convient pas\u00a0: le nom fait 101 caract\u00e8res\u00a0; 100 au maximum",
        "email": "Cette adresse e-mail ne convient pas\u00a0: 'jan jansen@acme.test'\u00a0: la partie avant le '@' "
                 "ne peut contenir que des lettres ASCII, des chiffres ou !#$%&'*+/=?^_`{|}~-, en parties "
                 "s\u00e9par\u00e9es par des points (RFC 5321 4.1.2)",
    }, ["characters long", "the part before"]),
    # Checked together, after each field passed on its own:
    ("nl", {"email": "info@other.test"}, {
        "email": "Dit e-mailadres kan niet: het domein van het adres ('other.test') is niet 'acme.test' of een "
                 "subdomein daarvan",
    }, ["is not 'acme.test' or a name below it"]),
    ("fr", {"email": "info@bounce.acme.test"}, {
        None: "'bounce.acme.test' sert \u00e0 l\u2019adresse de retour (rebonds), l\u2019adresse e-mail ne peut "
              "donc pas s\u2019y trouver\u00a0; choisissez une autre adresse",
    }, ["is the address's own domain", "--return-path"]),
]


@pytest.mark.parametrize(("lang", "typed", "expected", "english"), TRANSLATED,
                         ids=[f"{t[0]}-{'-'.join(f or 'form' for f in t[2])}" for t in TRANSLATED])
def test_the_page_explains_the_error_in_its_language(server: AdminServer, lang: str, typed: dict[str, str],
                                                    expected: dict[str | None, str], english: list[str]) -> None:
    with browser(server) as client:
        sign_in(client, "olivia")
        page = refused(client, lang, **typed)
    for field, sentence in expected.items():
        assert said(page, field) == sentence
    for words in english:
        assert words not in page
    assert 'lang="en"' not in page.replace('lang="en" hreflang="en"', "")  # nothing left in English
    for shown in re.findall(r'<p class="error"[^>]*>(.*?)</p>', page, re.DOTALL):  # what was typed stays escaped
        assert "<info@" not in shown and "\r" not in shown and "\n" not in shown, shown


def test_the_english_page_reads_as_the_cli_with_the_field_names(server: AdminServer, site: Site) -> None:
    with browser(server) as client:
        sign_in(client, "olivia")
        page = refused(client, "en", email="Acme <info@acme.test>")
    line = site.cli("tenant", "set", "acme", "--name", "Acme BV", "--email", "Acme <info@acme.test>",
                    "--domain", "acme.test", "--as", "olivia").err.strip().removeprefix("relay-admin: ")
    assert line == ("--email: 'Acme <info@acme.test>' has a name in it; put the name in --name and give only "
                    "the address in --email, e.g. 'info@acme.test'")  # the CLI says it as it always did
    words = line.removeprefix("--email: ").replace("--name", "\u201cName\u201d").replace(
        "--email", "\u201cE-mail address\u201d")
    assert said(page, "email") == f"This e-mail address will not do: {words}"


def test_the_api_keeps_the_cli_line_and_adds_the_code(server: AdminServer, site: Site) -> None:
    token = site.user("ada", "admin", actor="olivia")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.put("/api/v1/tenants/acme", headers={"Authorization": f"Bearer {token}"},
                            json=GOOD | {"email": "Acme <info@acme.test>"})
    assert answer.status_code == 422
    assert json.loads(answer.text) == {"error": {
        "field": "email", "code": "email_has_name",
        "message": "--email: 'Acme <info@acme.test>' has a name in it; put the name in --name and give only "
                   "the address in --email, e.g. 'info@acme.test'"}}
