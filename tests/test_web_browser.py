"""The settings page in a real headless Chromium (Debian's chromium and chromium-driver), as a person uses it.

Sign in, fill the three fields, save, see the records, copy a value, press Validate against NSD and
see `verified`; download the Excel file; an accountant's read-only page and a forged POST refused; a
form without its CSRF token refused; a script-like tenant name shown as text; the keyboard path. One
browser for the module. Screenshots of the page in each language go to tests/screenshots/ (not
committed), for a person to look at.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from admin.export_texts import LANGUAGES
from tests.peers import require_binary
from tests.web_server import PASSWORD, AdminServer, Site, owner_site, serving

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
SCRIPT_NAME = "<script>alert('owned')</script>"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = owner_site(tmp_path_factory.mktemp("web-browser"), SCRIPT_NAME)
    site.serve_dns({"shop.test": ""})  # the zone exists, its records come once the page shows them
    yield site
    site.stop()


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[AdminServer]:
    yield from serving(site)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(server: AdminServer, downloads: Path) -> Iterator[Any]:
    chromium = require_binary("chromium", "chromium")
    chromedriver = require_binary("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    # A German browser: none of the page's languages, so the page must fall back to Dutch.
    options.add_experimental_option("prefs", {"intl.accept_languages": "de-DE,de"})
    # The driver is Debian's, named explicitly: Selenium Manager must not look for (or download) one.
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield browser
    browser.quit()


def by(kind: str) -> str:
    from selenium.webdriver.common.by import By

    return str(getattr(By, kind))


def sign_in(driver: Any, server: AdminServer, user: str, target: str, *, shot: str = "") -> None:
    """Sign in as a person does: open the page, get sent to the form, type, press Enter."""
    from selenium.webdriver.common.keys import Keys

    driver.delete_all_cookies()
    driver.get(server.url + target)
    assert "/login?" in driver.current_url and "next=" in driver.current_url
    if shot:
        screenshot(driver, shot)
    driver.find_element(by("NAME"), "username").send_keys(user)
    password = driver.find_element(by("NAME"), "password")
    navigating(driver, lambda: password.send_keys(PASSWORD + Keys.ENTER))
    assert driver.current_url == server.url + target


def element(driver: Any, css: str) -> Any:
    return driver.find_element(by("CSS_SELECTOR"), css)


def elements(driver: Any, css: str) -> list[Any]:
    found: list[Any] = driver.find_elements(by("CSS_SELECTOR"), css)
    return found


def wait_until(driver: Any, condition: Callable[[], bool], seconds: float = 10) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda _: condition())


def navigating(driver: Any, act: Callable[[], object]) -> None:
    """Do `act` (a click, Enter, a script's submit) and wait until the next page has replaced this one."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(by("TAG_NAME"), "html")
    act()
    WebDriverWait(driver, 20, poll_frequency=0.05).until(expected_conditions.staleness_of(page))
    WebDriverWait(driver, 20, poll_frequency=0.05).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def status(driver: Any) -> str:
    return str(element(driver, "#status").get_attribute("data-status"))


def screenshot(driver: Any, name: str) -> Path:
    """The whole page, as tall as it is, to tests/screenshots/NAME.png."""
    SCREENSHOTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, int(height) + 150))  # the window's own frame takes some
    driver.execute_script("window.scrollTo(0, 0)")
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    return path


def test_sign_in_fill_the_three_fields_save_see_the_records_validate_verified(
        driver: Any, server: AdminServer, site: Site) -> None:
    sign_in(driver, server, "olivia", "/tenants/shop/settings", shot="login-nl")
    assert element(driver, "html").get_attribute("lang") == "nl"
    assert status(driver) == "new" and not elements(driver, "#records")
    for name, value in (("name", "Shop BV"), ("email", "facturen@shop.test"), ("domain", "shop.test")):
        field = element(driver, f"input[name={name}]")
        assert field.get_attribute("aria-required") == "true"
        field.send_keys(value)
    navigating(driver, element(driver, "#save").click)

    assert driver.current_url.endswith("/tenants/shop/settings?done=created")
    assert status(driver) == "pending"
    rows = elements(driver, "#records tbody tr")
    records = site.ok("records", "shop", "--json", "--as", "olivia")
    assert len(rows) == 3 == records.count('"purpose"')
    dkim_value = element(driver, "#value-1").text
    assert dkim_value.startswith("v=DKIM1; k=rsa; p=") and dkim_value in records

    # A copy button per value: the value lands on the clipboard and the button says so.
    button = element(driver, "button[data-copy=value-1]")
    assert button.is_displayed()
    button.click()
    wait_until(driver, lambda: button.text == "Gekopieerd")
    clipboard = driver.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], () => arguments[0](null))")
    assert clipboard == dkim_value

    # IT publishes the records (here: NSD serves them), then Validate.
    site.publish("shop.test", site.bind("shop"))
    validate = element(driver, "#validate")
    assert validate.text == "Valideren"
    navigating(driver, validate.click)
    assert "done=verified" in driver.current_url and driver.current_url.endswith("#checks")
    assert status(driver) == "verified"
    checks = elements(driver, "#checks li.check")
    assert [c.get_attribute("data-status") for c in checks] == ["ok", "ok", "ok"]
    assert all(c.find_element(by("CSS_SELECTOR"), ".diagnosis").text for c in checks)
    assert element(driver, "#checks #done").text.startswith("Gecontroleerd: alle verplichte records staan goed")
    assert [r.find_element(by("CSS_SELECTOR"), ".check .badge").text
            for r in elements(driver, "#records tbody tr")] == ["In orde"] * 3
    screenshot(driver, "settings-verified-nl")


def test_validate_says_that_it_is_checking(driver: Any, server: AdminServer) -> None:
    driver.get(server.url + "/tenants/shop/settings?lang=en")
    # Hold the form back after the page's own handler ran, to see what a person sees while it checks.
    driver.execute_script(
        "document.getElementById('validate').form.addEventListener('submit', e => e.preventDefault())")
    button = element(driver, "#validate")
    button.click()
    assert button.text == "Checking…"
    assert button.get_attribute("aria-disabled") == "true"
    assert element(driver, "[data-busy-note]").text == "Checking…"


def test_the_excel_file_comes_in_the_pages_language(driver: Any, server: AdminServer, downloads: Path) -> None:
    for lang in ("fr", "nl"):
        driver.get(server.url + f"/tenants/shop/settings?lang={lang}")
        element(driver, "#export").click()
        target = downloads / f"shop-dns-{lang}.xlsx"
        deadline = time.monotonic() + 20
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        workbook = load_workbook(io.BytesIO(target.read_bytes()))
        assert workbook.sheetnames == [LANGUAGES[lang].records_sheet, LANGUAGES[lang].instructions_sheet]


@pytest.mark.parametrize("lang", ["nl", "en", "fr"])
def test_a_screenshot_of_the_page_in_each_language(driver: Any, server: AdminServer, lang: str) -> None:
    driver.get(server.url + f"/tenants/shop/settings?lang={lang}")
    assert element(driver, "html").get_attribute("lang") == lang
    labels = {"nl": "E-mailadres", "en": "E-mail address", "fr": "Adresse e-mail"}
    assert element(driver, "label[for=email]").text == labels[lang]
    assert screenshot(driver, f"settings-{lang}").stat().st_size > 10_000


def test_errors_show_beside_the_field_that_is_wrong(driver: Any, server: AdminServer, site: Site) -> None:
    driver.get(server.url + "/tenants/acme/settings")
    email = element(driver, "input[name=email]")
    email.clear()
    email.send_keys("Acme <info@acme.test>")
    element(driver, "input[name=domain]").clear()
    navigating(driver, element(driver, "#save").click)
    email = element(driver, "input[name=email]")
    assert email.get_attribute("value") == "Acme <info@acme.test>"
    assert email.get_attribute("aria-invalid") == "true"
    # "Fout:" first, for screen readers only (visually hidden)
    lead, beside = element(driver, "#email-error").text.split("\n")
    assert lead == "Fout:"
    # The whole explanation in Dutch, with the page's field names (not the CLI's English and options)
    assert beside.startswith("Dit e-mailadres kan niet: 'Acme <info@acme.test>' bevat een naam; zet de naam bij")
    assert "--" not in beside and "“Naam”" in beside and "has a name" not in beside
    assert "email-error" in email.get_attribute("aria-describedby")
    assert element(driver, "#domain-error").text == "Fout:\nVul het domein in"
    assert not elements(driver, "#name-error")
    summary = [a.get_attribute("href") for a in elements(driver, "#error-summary a")]
    assert [link.rsplit("#", 1)[1] for link in summary] == ["email", "domain"]
    screenshot(driver, "settings-errors-nl")
    assert "Acme BV" in site.ok("tenant", "show", "acme", "--as", "olivia")  # nothing changed


def test_a_form_posted_without_its_csrf_token_is_refused(driver: Any, server: AdminServer, site: Site) -> None:
    driver.get(server.url + "/tenants/acme/settings?lang=en")
    driver.execute_script(
        "document.querySelector('#save').form.querySelector('input[name=csrf]').remove()")
    name = element(driver, "input[name=name]")
    name.clear()
    name.send_keys("Acme Hijacked")
    navigating(driver, element(driver, "#save").click)
    assert element(driver, "h1").text == "Not allowed"
    assert "did not come from this page" in element(driver, "main").text
    assert "Acme BV" in site.ok("tenant", "show", "acme", "--as", "olivia")


def test_a_script_like_tenant_name_shows_as_text(driver: Any, server: AdminServer) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    driver.get(server.url + "/tenants/xss/settings")
    assert element(driver, "h1 .subtitle").text == SCRIPT_NAME
    assert element(driver, "input[name=name]").get_attribute("value") == SCRIPT_NAME
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text
    driver.get(server.url + "/tenants")
    assert SCRIPT_NAME in element(driver, "table").text
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text


def test_the_keyboard_reaches_everything_and_every_field_is_labelled(driver: Any, server: AdminServer) -> None:
    from selenium.webdriver.common.keys import Keys

    driver.get(server.url + "/tenants/shop/settings")
    element(driver, "body").send_keys(Keys.TAB)
    active = driver.switch_to.active_element
    assert active.get_attribute("class") == "skip-link" and active.text == "Naar de inhoud"
    active.send_keys(Keys.ENTER)
    assert driver.switch_to.active_element.get_attribute("id") == "main"
    reached = []
    for _ in range(40):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        focused = driver.switch_to.active_element
        reached.append(focused.get_attribute("id") or focused.get_attribute("name") or focused.text)
    for wanted in ("name", "email", "domain", "save", "export", "validate"):
        assert wanted in reached, reached
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input:not([type=hidden]), button')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())"
        ".map(e => e.outerHTML)")
    assert unlabelled == []


def test_an_accountant_sees_the_page_read_only_and_a_forged_post_is_refused(
        driver: Any, server: AdminServer, site: Site) -> None:
    sign_in(driver, server, "carl", "/tenants/shop/settings?lang=en")
    assert status(driver) == "verified"
    for name in ("name", "email", "domain"):
        assert element(driver, f"input[name={name}]").get_attribute("disabled") == "true"
    assert not elements(driver, "#save") and not elements(driver, "#validate")
    assert elements(driver, "#export") and len(elements(driver, "#records tbody tr")) == 3
    assert "viewing as accountant" in element(driver, "#readonly").text
    screenshot(driver, "settings-accountant-en")
    # A forged POST with carl's own (valid) CSRF token, taken from the sign-out form.
    navigating(driver, lambda: driver.execute_script(FORGED_POST))
    assert element(driver, "h1").text == "Not allowed"
    assert "only owners and admins can change a tenant's sender" in element(driver, "main").text
    assert "Shop BV" in site.ok("tenant", "show", "shop", "--as", "olivia")
    denied = site.ok("audit", "shop", "--as", "olivia")
    assert "carl  tenant.set  shop  denied" in denied


FORGED_POST = """
const form = document.createElement('form');
form.method = 'post';
form.action = '/tenants/shop/settings?lang=en';
for (const [name, value] of [['name', 'Carl BV'], ['email', 'carl@shop.test'], ['domain', 'shop.test'],
                             ['csrf', document.querySelector('input[name=csrf]').value]]) {
    const input = document.createElement('input');
    input.name = name; input.value = value; form.appendChild(input);
}
document.body.appendChild(form);
form.submit();
"""
