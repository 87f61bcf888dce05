"""Pure parts of validation with fake findings: tag lists, DKIM records read by meaning, verdicts."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from functools import cache

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.core import dkimkeys
from relay.core.models import CheckResult, CheckStatus, Sender
from relay.domains.checks import return_path
from relay.domains.checks.common import Findings, duration, same_name
from relay.domains.dkimrecord import Verdict, assess, our_key
from relay.domains.dnscheck import Answer, DnsError, Failure, NoData, Question, Record
from relay.domains.records import dkim_value, records_for
from relay.domains.taglist import TagListError, parse_tag_list
from relay.domains.validation import COULD_NOT_CHECK, NOT_VERIFIED, VERIFIED, outcome_of

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@cache
def b64(bits: int = 2048, n: int = 0) -> str:
    return dkimkeys.public_key_b64(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def ours() -> rsa.RSAPublicKey:
    return our_key(dkim_value(b64()))


# --- tag lists (RFC 6376 3.2) ---


def test_tag_list_ignores_whitespace_and_a_final_semicolon() -> None:
    assert parse_tag_list(" v = DKIM1 ;\tk=rsa; p=AB CD ; ") == [("v", "DKIM1"), ("k", "rsa"), ("p", "AB CD")]
    assert parse_tag_list("p=") == [("p", "")]


@pytest.mark.parametrize(
    ("text", "problem"),
    [("v=DKIM1;; p=x", "empty part"), ("v=DKIM1; junk", "not tag=value"),
     ("1v=x", "not a tag name"), ("p=a; p=b", "appears twice")],
)
def test_tag_list_errors_name_the_part(text: str, problem: str) -> None:
    with pytest.raises(TagListError, match=problem):
        parse_tag_list(text)


# --- DKIM records by meaning ---


def test_our_key_matches_in_any_spelling() -> None:
    key = b64()
    spaced = " ".join(key[i : i + 50] for i in range(0, len(key), 50))
    for text in (dkim_value(key), f"p={spaced}", f"k=rsa;p={key};", f"v=DKIM1; h=sha1:sha256; p={key}"):
        assert assess(text, (), ours()).verdict is Verdict.MATCH, text
    assert assess(f"v=DKIM1; t=y; p={key}", (), ours()).testing


@pytest.mark.parametrize(
    ("text", "verdict", "detail"),
    [
        ('"v=DKIM1; k=rsa; p={key}"', Verdict.QUOTED, "the key inside is ours"),
        ("v=DKIM1; k=rsa; p=", Verdict.REVOKED, ""),
        ("v=DKIM1; k=rsa; p={key_cut}", Verdict.DAMAGED, "cut off"),
        ("v=DKIM1; k=rsa; p=AAAA{key}", Verdict.DAMAGED, "lost or mistyped"),
        ("v=DKIM1; p={other}", Verdict.OTHER_KEY, ""),
        ("v=DKIM1; p={small}", Verdict.WEAK, "1024 bits"),
        ("k=rsa; v=DKIM1; p={key}", Verdict.VERSION, "not the first tag"),
        ("v=DKIM2; p={key}", Verdict.VERSION, "not DKIM1"),
        ("v=DKIM1; k=ed25519; p={key}", Verdict.KEY_TYPE, "k=ed25519"),
        ("v=DKIM1; h=sha1; p={key}", Verdict.HASH, "h=sha1"),
        ("v=DKIM1; s=tlsrpt; p={key}", Verdict.SERVICE, "s=tlsrpt"),
        ("v=DKIM1; p={key}; p={key}", Verdict.SYNTAX, "appears twice"),
        ("{key}", Verdict.BARE_KEY, ""),
        ("v=spf1 -all", Verdict.NOT_DKIM, ""),
    ],
)
def test_dkim_verdicts(text: str, verdict: Verdict, detail: str) -> None:
    key = b64()
    filled = text.format(key=key, key_cut=key[:200], other=b64(2048, 1), small=b64(1024))
    assessment = assess(filled, (), ours())
    assert assessment.verdict is verdict
    assert detail in assessment.detail


def test_a_key_cut_at_a_255_character_string_says_so() -> None:
    value = dkim_value(b64())[:255]
    assessment = assess(value, (value,), ours())
    assert assessment.verdict is Verdict.DAMAGED
    assert assessment.detail == f"cut off at a 255-character string: 237 of the {len(b64())} characters of our key"


def test_a_key_in_two_strings_is_never_flagged() -> None:
    value = dkim_value(b64())
    assert assess(value, (value[:250], value[250:]), ours()).verdict is Verdict.MATCH


# --- return-path verdicts a real server cannot produce (NSD refuses such zones) ---

SENDER = Sender("Acme", "billing@acme.test", "acme.test")
RP_RECORD = records_for(SENDER, [], return_path_target="bounces.relay.test")[0]


def test_cname_beside_other_data_is_named() -> None:
    findings: Findings = {
        Question("bounce.acme.test", "CNAME"): Answer("bounce.acme.test", "CNAME", (Record("bounces.relay.test"),)),
        Question("bounce.acme.test", "TXT"): Answer("bounce.acme.test", "TXT", (Record("v=spf1 -all", ("v=spf1 -all",)),)),
        Question("bounce.acme.test", "MX"): NoData("bounce.acme.test", "MX", 300),
    }
    outcome = return_path.decide(RP_RECORD, findings)
    assert outcome.status is CheckStatus.MISMATCH
    assert "also TXT data" in outcome.diagnosis and "a CNAME must stand alone" in outcome.diagnosis
    assert outcome.found == ("bounces.relay.test", "TXT v=spf1 -all")


def test_cname_target_is_compared_as_a_name() -> None:
    assert same_name("BOUNCES.relay.TEST.", "bounces.relay.test")
    findings = {Question("bounce.acme.test", "CNAME"): Answer("bounce.acme.test", "CNAME", (Record("Bounces.Relay.Test"),))}
    assert return_path.decide(RP_RECORD, findings).status is CheckStatus.OK


def test_flattened_data_cannot_be_compared_when_the_target_cannot_be_asked() -> None:
    findings: Findings = {
        Question("bounce.acme.test", "CNAME"): NoData("bounce.acme.test", "CNAME", 300),
        Question("bounce.acme.test", "A"): Answer("bounce.acme.test", "A", (Record("192.0.2.10"),)),
        **{Question("bounces.relay.test", t): DnsError("bounces.relay.test", t, "x answered SERVFAIL", Failure.SERVFAIL)
           for t in ("A", "AAAA", "TXT")},
    }
    assert return_path.decide(RP_RECORD, findings).status is CheckStatus.ERROR


# --- the status rule ---


def result(status: CheckStatus, required: bool = True) -> CheckResult:
    return CheckResult("dkim", "TXT", "x", status, "", (), "", NOW, required)


def test_outcome_counts_only_required_checks_and_error_wins() -> None:
    ok, warn = result(CheckStatus.OK), result(CheckStatus.WARNING, required=False)
    assert outcome_of([ok, warn, result(CheckStatus.ERROR, required=False)]) == VERIFIED
    assert outcome_of([ok, result(CheckStatus.MISSING)]) == NOT_VERIFIED
    assert outcome_of([result(CheckStatus.MISSING), result(CheckStatus.ERROR)]) == COULD_NOT_CHECK
    no_key = dataclasses.replace(ok, purpose="return-path")
    assert outcome_of([no_key]) == NOT_VERIFIED


def test_durations_read_naturally() -> None:
    assert [duration(s) for s in (1, 45, 60, 300, 3600, 5400, 86400)] == [
        "1 second", "45 seconds", "1 minute", "5 minutes", "1 hour", "90 minutes", "1 day"]
