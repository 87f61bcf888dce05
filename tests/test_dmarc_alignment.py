"""Issue 11 item 10: a From address below the signing domain, judged as receivers judge DMARC.

facturen@mail.beta.test with --domain beta.test is signed d=beta.test: under adkim=s at the policy
receivers find for mail.beta.test (RFC 7489 6.6.3, the tree walk) DKIM cannot align, and validate
says so plainly; `tenant set` warns at once. Against a real NSD (see tests/test_validate.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.conftest import CliResult
from tests.test_validate import Site, check, make_site, validate

__all__ = ["make_site"]  # the fixture, used by name

Cli = Callable[..., CliResult]
FROM = "facturen@mail.beta.test"


def serve(site: Site, dmarc: str) -> None:
    site.serve(f"{site.dkim()}\n{site.cname}\n{dmarc}", origin="beta.test")


def below(make: Callable[..., Site]) -> Site:
    return make(domain="beta.test", email=FROM)


def test_strict_dkim_at_the_parent_is_a_plain_mismatch(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = below(make_site)
    serve(site, '_dmarc IN TXT "v=DMARC1; p=reject; adkim=s"')
    code, report = validate(cli)
    dmarc = check(report, "dmarc")
    assert dmarc["status"] == "mismatch" and dmarc["required"] is False
    for words in (f"Mail From {FROM} is signed d=beta.test",
                  "the DMARC policy at _dmarc.beta.test has adkim=s (strict), so DKIM does not align",
                  "receivers apply p=reject to forwarded mail",
                  "Fix: use an address directly at beta.test, or set the domain to mail.beta.test,"
                  " or relax to adkim=r at _dmarc.beta.test."):
        assert words in dmarc["diagnosis"], dmarc["diagnosis"]
    assert "adkim=s is fine" not in dmarc["diagnosis"]
    assert dmarc["found"] == ["_dmarc.beta.test TXT v=DMARC1; p=reject; adkim=s"]
    # DMARC is advice (SPEC): it never blocks verification, but the word is not ok.
    assert code == 0 and report["verified"] is True


def test_strict_spf_too_means_all_mail_fails(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = below(make_site)
    serve(site, '_dmarc IN TXT "v=DMARC1; p=quarantine; adkim=s; aspf=s"')
    _, report = validate(cli)
    dmarc = check(report, "dmarc")
    assert dmarc["status"] == "mismatch"
    assert "SPF cannot align either (aspf=s; the return path is bounce.beta.test)" in dmarc["diagnosis"]
    assert "receivers apply p=quarantine to all of its mail" in dmarc["diagnosis"]


def test_relaxed_dkim_at_the_parent_aligns(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = below(make_site)
    serve(site, '_dmarc IN TXT "v=DMARC1; p=reject; adkim=r"')
    _, report = validate(cli)
    dmarc = check(report, "dmarc")
    assert dmarc["status"] == "ok", dmarc["diagnosis"]
    assert "From mail.beta.test aligns with our signature d=beta.test (adkim=r" in dmarc["diagnosis"]


def test_the_from_domains_own_record_takes_precedence(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = below(make_site)
    serve(site, '_dmarc IN TXT "v=DMARC1; p=reject; adkim=s"\n_dmarc.mail IN TXT "v=DMARC1; p=reject"')
    _, report = validate(cli)
    dmarc = check(report, "dmarc")
    assert dmarc["status"] == "ok", dmarc["diagnosis"]
    assert "The DMARC record at _dmarc.mail.beta.test applies to From mail.beta.test" in dmarc["diagnosis"]
    assert dmarc["found"] == ["_dmarc.mail.beta.test TXT v=DMARC1; p=reject"]


def test_a_strict_record_of_the_from_domain_is_found_first(
    cli: Cli, make_site: Callable[..., Site]
) -> None:
    site = below(make_site)
    serve(site, '_dmarc IN TXT "v=DMARC1; p=none"\n_dmarc.mail IN TXT "v=DMARC1; p=reject; adkim=s"')
    _, report = validate(cli)
    dmarc = check(report, "dmarc")
    assert dmarc["status"] == "mismatch"
    assert "the DMARC policy at _dmarc.mail.beta.test has adkim=s (strict)" in dmarc["diagnosis"]


def test_an_address_at_the_domain_itself_aligns_under_strict(
    cli: Cli, make_site: Callable[..., Site]
) -> None:
    site = make_site(domain="beta.test", email="facturen@beta.test")
    serve(site, '_dmarc IN TXT "v=DMARC1; p=reject; adkim=s"')
    _, report = validate(cli)
    dmarc = check(report, "dmarc")
    assert dmarc["status"] == "ok" and "adkim=s is fine" in dmarc["diagnosis"]


@pytest.mark.parametrize("json_output", [False, True])
def test_tenant_set_warns_about_an_address_below_the_domain(
    cli: Cli, make_site: Callable[..., Site], json_output: bool
) -> None:
    make_site()  # the store and its users
    args = ["tenant", "set", "beta", "--name", "Beta", "--email", FROM, "--domain", "beta.test",
            "--as", "olivia"]
    result = cli(*args, *(["--json"] if json_output else []))
    assert result.code == 0
    warning = ("relay-admin: warning: facturen@mail.beta.test is below beta.test: DKIM will sign"
               " d=beta.test, so a DMARC policy with adkim=s (strict alignment) for mail.beta.test"
               " would fail DMARC for this address")
    [line] = result.err.splitlines()
    assert line.startswith(warning), line
    if json_output:
        data = json.loads(result.out)
        assert [f"relay-admin: warning: {w}" for w in data["warnings"]] == [line]
    at_domain = cli("tenant", "set", "gamma", "--name", "Gamma", "--email", "info@gamma.test",
                    "--domain", "gamma.test", "--as", "olivia", "--json")
    assert at_domain.code == 0 and at_domain.err == "" and json.loads(at_domain.out)["warnings"] == []
