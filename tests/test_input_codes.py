"""Input errors carry a stable code and its values, so the settings page can say them in nl, en and fr,
while the CLI's English line stays exactly what it was.

Every code in admin/inputs.py (found in its source) is raised here by a bad input, has a text in each
of the three languages, and those texts fill in with the values the error carries. The English text
is the CLI's line with the page's field names; Dutch and French are not the English one.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import NamedTuple

import pytest

from admin import inputs
from admin.context import UsageError
from admin.web.errors import invalid
from admin.web.i18n import LANGUAGES, Translator, texts
from admin.web.pages import environment
from admin.web.views import Problem, SettingsView, page_words, problem_words

LONG_LABEL = "a" * 64 + ".test"
LONG_DOMAIN = ("a" * 63 + ".") * 4 + "test"  # 256 characters: IDNA refuses the whole, not a part
DKIM_DOMAIN = ("a" * 60 + ".") * 3 + "a" * 40 + ".test"  # 228: fine, but not with the DKIM name below
LONG_LOCAL = "a" * 65 + "@acme.test"
LONG_ADDRESS = "a" * 64 + "@" + ("a" * 62 + ".") * 3 + "aaaaaa.test"  # 259 characters
ENCODED = "=?utf-8?q?Soci=C3=A9t=C3=A9?="  # decodes to Société
ENCODED_CRLF = "=?utf-8?b?eA0KQmNjOiBzcHlAYmFuay5jb20=?="  # decodes to "x\r\nBcc: spy@bank.com"


class Case(NamedTuple):
    check: Callable[[], object]
    code: str
    line: str  # the CLI's line, as it was before codes existed: it must not change


CASES = [
    Case(lambda: inputs.identifier("Acme!", "TENANT", "tenant id"), "identifier_invalid",
         "TENANT: 'Acme!' is not a valid tenant id (1-63 characters: a-z, 0-9, '.', '_', '-', "
         "starting with a letter or digit)"),
    Case(lambda: inputs.display_name("Acme\r\nBcc: x@evil.test"), "name_control_char",
         "--name: contains the control character U+000D; use plain text"),
    Case(lambda: inputs.display_name("   "), "empty", "--name: must not be empty"),
    Case(lambda: inputs.display_name("A" * 101), "name_too_long", "--name: is 101 characters long; at most 100"),
    Case(lambda: inputs.display_name(ENCODED), "name_encoded_example",
         "--name: '=?utf-8?q?Soci=C3=A9t=C3=A9?=' looks like MIME-encoded text (RFC 2047); type the name "
         "itself, e.g. 'Société'"),
    Case(lambda: inputs.display_name(ENCODED_CRLF), "name_encoded",
         "--name: '=?utf-8?b?eA0KQmNjOiBzcHlAYmFuay5jb20=?=' looks like MIME-encoded text (RFC 2047); type "
         "the name itself"),
    Case(lambda: inputs.domain(""), "empty", "--domain: must not be empty"),
    Case(lambda: inputs.domain("https://acme.test/"), "domain_is_url",
         "--domain: 'https://acme.test/' is a web address (URL); give only the domain, e.g. acme.test"),
    Case(lambda: inputs.domain("info@acme.test"), "domain_is_email",
         "--domain: 'info@acme.test' is an e-mail address; give only the domain, e.g. acme.test"),
    Case(lambda: inputs.domain("acme.test:25"), "domain_has_port",
         "--domain: 'acme.test:25' has a port; give only the domain, e.g. acme.test"),
    Case(lambda: inputs.domain("acme .test"), "domain_has_space",
         "--domain: 'acme .test' contains a space; a domain name has no spaces or control characters"),
    Case(lambda: inputs.domain("acme\t.test"), "domain_has_control",
         "--domain: 'acme\\t.test' contains U+0009; a domain name has no spaces or control characters"),
    Case(lambda: inputs.domain("acme..test"), "domain_empty_label",
         "--domain: 'acme..test' has an empty part (two dots in a row, or a dot at the start)"),
    Case(lambda: inputs.domain(LONG_LABEL), "domain_label_too_long",
         f"--domain: {LONG_LABEL!r} has a part longer than 63 characters ('aaaaaaaaaaaaaaaaaaaa'...)"),
    Case(lambda: inputs.domain("-acme.test"), "domain_label_hyphen",
         "--domain: '-acme.test' has a part that starts or ends with '-' ('-acme')"),
    Case(lambda: inputs.domain("xn--zz.test"), "domain_label_bad_xn",
         "--domain: 'xn--zz.test' has a part starting with 'xn--' that is not a valid encoded name ('xn--zz')"),
    Case(lambda: inputs.domain("ab--cd.test"), "domain_label_double_hyphen",
         "--domain: 'ab--cd.test' has '--' as 3rd and 4th character ('ab--cd'); only encoded names (xn--) may"),
    Case(lambda: inputs.domain("a\u05d0.test"), "domain_label_mixed",
         "--domain: 'a\u05d0.test' has a part whose characters cannot stand together ('a\u05d0'), such as "
         "left-to-right and right-to-left letters, or a joiner or mark out of place"),
    Case(lambda: inputs.domain("acme!.test"), "domain_bad_char",
         "--domain: 'acme!.test' contains '!' (U+0021), which a domain name cannot have"),
    Case(lambda: inputs.domain("a\u200db.test"), "domain_bad_char",
         "--domain: 'a\\u200db.test' contains U+200D, which a domain name cannot have"),
    Case(lambda: inputs.domain(LONG_DOMAIN), "domain_invalid", f"--domain: {LONG_DOMAIN!r} is not a valid domain name"),
    Case(lambda: inputs.domain("acme"), "domain_one_label",
         "--domain: 'acme' needs at least two parts separated by a dot, like acme.nl"),
    Case(lambda: inputs.domain("192.168.1.1"), "domain_is_ip",
         "--domain: '192.168.1.1' is an IP address, not a domain name"),
    Case(lambda: inputs.sender_domain(DKIM_DOMAIN), "domain_too_long_for_dkim",
         f"--domain: {DKIM_DOMAIN!r} is too long: the DKIM record name below it would exceed 253 characters"),
    Case(lambda: inputs.email("Acme <info@acme.test>"), "email_has_name",
         "--email: 'Acme <info@acme.test>' has a name in it; put the name in --name and give only the "
         "address in --email, e.g. 'info@acme.test'"),
    Case(lambda: inputs.email("Acme <info@acme.test>", "--to"), "address_has_name",
         "--to: 'Acme <info@acme.test>' has a name in it; give only the address in --to, e.g. 'info@acme.test'"),
    Case(lambda: inputs.email("<info@acme.test>"), "email_angle_brackets",
         "--email: '<info@acme.test>': give the address without '<' and '>', e.g. 'info@acme.test'"),
    Case(lambda: inputs.email("mailto:info@acme.test"), "email_mailto",
         "--email: 'mailto:info@acme.test': give the address without 'mailto:', e.g. 'info@acme.test'"),
    Case(lambda: inputs.email(" "), "empty", "--email: must not be empty"),  # the page asks: "Vul het e-mailadres in"
    Case(lambda: inputs.email("not an address"), "email_not_address",
         "--email: 'not an address' is not an e-mail address (local@domain)"),
    Case(lambda: inputs.email("jan jansen@acme.test"), "email_local_chars",
         "--email: 'jan jansen@acme.test': the part before '@' must be ASCII letters, digits or "
         "!#$%&'*+/=?^_`{|}~- in dot-separated parts (RFC 5321 4.1.2)"),
    Case(lambda: inputs.email(LONG_LOCAL), "email_local_too_long",
         f"--email: {LONG_LOCAL!r}: the part before '@' is longer than 64 characters"),
    Case(lambda: inputs.email(LONG_ADDRESS), "email_too_long",
         f"--email: {LONG_ADDRESS!r} is longer than 254 characters"),
    Case(lambda: inputs.email("info@https://acme.test"), "domain_is_url",
         "--email: 'https://acme.test' is a web address (URL); give only the domain, e.g. acme.test"),
    Case(lambda: inputs.email_within_domain("info@other.test", "acme.test"), "email_outside_domain",
         "--email: the address's domain 'other.test' is not 'acme.test' or a name below it"),
    Case(lambda: inputs.return_path_label("_dmarc"), "return_path_reserved",
         "--return-path: '_dmarc' is reserved for DMARC/DKIM records; choose another label"),
    Case(lambda: inputs.return_path_label("bad.label"), "return_path_not_label",
         "--return-path: 'bad.label' is not a single DNS label (1-63 characters: letters, digits, '-' "
         "inside; no dots)"),
    Case(lambda: inputs.return_path_clear_of_address("bounce", "info@bounce.acme.test", "acme.test"),
         "return_path_is_address_domain",
         "--return-path: 'bounce.acme.test' is the address's own domain; choose another label"),
    Case(lambda: inputs.network("10.1.0.1/16"), "network_invalid",
         "--network: 10.1.0.1/16 has host bits set (use CIDR form, e.g. 10.1.0.0/16)"),
]
PAGE_FIELDS = ("--name:", "--email:", "--domain:")


def refusal(check: Callable[[], object]) -> UsageError:
    with pytest.raises(UsageError) as caught:
        check()
    return caught.value


def codes_in_source() -> set[str]:
    """Every code admin/inputs.py can raise: the strings given as `code=...` anywhere in it."""
    tree = ast.parse(resources.files("admin").joinpath("inputs.py").read_text(encoding="utf-8"))
    return {node.value for keyword in ast.walk(tree) if isinstance(keyword, ast.keyword) and keyword.arg == "code"
            for node in ast.walk(keyword.value) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def defensive_refusals(monkeypatch: pytest.MonkeyPatch) -> list[UsageError]:
    """The two checks after IDNA that IDNA itself never lets through: reached by faking its answer."""
    found = []
    for answer in (b"a_b.test", (b"a" * 60 + b".") * 4 + b"a" * 10 + b".test"):
        monkeypatch.setattr(inputs.idna, "encode", lambda *_, answer=answer, **__: answer)
        found.append(refusal(lambda: inputs.domain("acme.test")))
    return found


def filled(problem: Problem, lang: str) -> str | None:
    return problem_words(problem, Translator(lang))


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c.code}" for i, c in enumerate(CASES)])
def test_the_cli_line_is_unchanged_and_the_error_carries_its_code(case: Case) -> None:
    exc = refusal(case.check)
    assert str(exc) == case.line
    assert exc.code == case.code
    # The values are rendered as the line renders them: no raw line break or control character.
    for value in exc.params.values():
        assert isinstance(value, str) and value.isprintable(), (case.code, value)
        assert value in case.line, (case.code, value)


def test_every_code_admin_inputs_can_raise_is_raised_here(monkeypatch: pytest.MonkeyPatch) -> None:
    in_source = codes_in_source()
    assert len(in_source) >= 30, in_source  # the scan found them (not an empty set passing trivially)
    defensive = defensive_refusals(monkeypatch)
    assert [e.code for e in defensive] == ["domain_not_ldh", "domain_too_long"]
    assert str(defensive[0]) == "--domain: 'acme.test': each part between dots must be letters, digits and '-'"
    assert str(defensive[1]) == "--domain: 'acme.test' is longer than 253 characters"
    assert {c.code for c in CASES} | {"domain_not_ldh", "domain_too_long"} == in_source


def test_every_code_has_a_text_in_each_language_that_fills_in(monkeypatch: pytest.MonkeyPatch) -> None:
    for code in codes_in_source():
        for lang in LANGUAGES:
            assert f"input.{code}" in texts(lang), (lang, code)
    problems = [Problem.of(refusal(c.check)) for c in CASES] + [Problem.of(e) for e in defensive_refusals(monkeypatch)]
    for problem in problems:
        words = {lang: filled(problem, lang) for lang in LANGUAGES}
        for lang, text in words.items():
            assert text and "{" not in text.replace("{|}", ""), (lang, problem.code, text)
            assert not re.search(r"--(name|email|domain)\b", text), (lang, problem.code, text)  # no CLI options
        assert words["nl"] != words["en"] and words["fr"] != words["en"], problem.code


@pytest.mark.parametrize("case", [c for c in CASES if c.line.startswith(PAGE_FIELDS)],
                         ids=lambda c: c.code)
def test_the_english_text_is_the_cli_line_with_the_pages_field_names(case: Case) -> None:
    problem = Problem.of(refusal(case.check))
    english = Translator("en")
    assert filled(problem, "en") == page_words(problem.detail, english)


def test_an_error_without_a_code_or_text_keeps_the_english_line() -> None:
    plain = Problem.of(UsageError("--email: something new went wrong"))
    assert plain.code is None and filled(plain, "nl") is None
    unknown = Problem.of(UsageError("--email: x", code="not_written_yet", params={"value": "'x'"}))
    assert filled(unknown, "fr") is None
    missing_value = Problem.of(UsageError("--email: x", code="email_not_address"))  # no {value} given
    assert filled(missing_value, "nl") is None


def render_form(lang: str, problems: list[UsageError]) -> str:
    """The settings template alone, as `Page.render` fills it in, for a new tenant's refused form."""
    t = Translator(lang)
    view = SettingsView(tenant="acme", status="new", name="x", email="x", domain="x", sender_email="",
                        sender_domain="", can_change=True, can_validate=True,
                        problems=[Problem.of(p) for p in problems])
    return environment().get_template("settings.html").render(
        t=t, lang=lang, url=lambda path, **_: path, user=None, csrf="", languages=[], lang_param="",
        page_words=lambda text: page_words(text, t), problem_words=lambda p: problem_words(p, t),
        view=view, done="", validation_outcomes=(), export_url="")


def test_the_template_translates_coded_errors_and_marks_the_rest_english() -> None:
    coded = refusal(lambda: inputs.email("<script>x</script> <a@acme.test>"))
    plain = UsageError("--domain: something the checks do not code yet")
    other = refusal(lambda: inputs.return_path_clear_of_address("bounce", "a@bounce.acme.test", "acme.test"))
    html = render_form("nl", [coded, plain, other])
    email = re.search(r'<p class="error" id="email-error">(.*?)</p>', html)
    assert email and "bevat een naam; zet de naam bij \u201cNaam\u201d" in email.group(1)
    assert 'lang="en"' not in email.group(1) and "has a name in it" not in html
    assert "&lt;script&gt;" in email.group(1) and "<script>x" not in html  # autoescaped
    domain = re.search(r'<p class="error" id="domain-error">(.*?)</p>', html)
    assert domain and '<span lang="en">something the checks do not code yet</span>' in domain.group(1)
    assert "&#39;bounce.acme.test&#39; is nodig voor het retouradres" in html
    assert "choose another label" not in html


def test_the_api_adds_the_code_beside_the_cli_line() -> None:
    coded = refusal(lambda: inputs.email("not an address"))
    body = json.loads(bytes(invalid(coded).json().body))
    assert body == {"error": {"field": "email", "message": str(coded), "code": "email_not_address"}}
    plain = json.loads(bytes(invalid(UsageError("--email: no code here")).json().body))
    assert plain == {"error": {"field": "email", "message": "--email: no code here"}}
