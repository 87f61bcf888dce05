"""`relay-admin records`: golden files in four formats, and each format read back by a real parser."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import idna
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from admin.render import quote_txt, split_txt
from relay.core import dkimkeys
from relay.core.models import (
    DkimKey,
    KeyState,
    Role,
    Sender,
    Tenant,
    TenantStatus,
    User,
)
from relay.core.settings import load_settings
from relay.core.store import Store, open_store
from tests.conftest import CliResult

GOLDEN = Path(__file__).parent / "golden"
SELECTOR = "ar20240101golden"
FIXED_TIME = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
KEEP_UNTIL = datetime(2099, 1, 8, 12, 0, tzinfo=UTC)  # a retiring key's remove-after, still ahead
ACCOUNTANT = "carol"
FORMATS = ("bind", "csv", "json", "table")
IDN_DOMAIN = idna.encode("bücher-müller.test", uts46=True).decode("ascii")


@dataclass(frozen=True)
class Case:
    tenant: str
    sender: Sender
    dmarc_rua: str | None = None


CASES = {
    "01-ascii": Case("acme", Sender("Acme Accounting", "billing@acme.test", "acme.test")),
    "02-idn": Case(
        "bm",
        Sender("Bücher & Müller", f"factuur@mail.{IDN_DOMAIN}", IDN_DOMAIN, return_path_label="retour"),
        dmarc_rua="mailto:dmarc@reports.relay.test",
    ),
}

Cli = Callable[..., CliResult]


@pytest.fixture(scope="module")
def golden_public_key() -> str:
    """The committed test key (tests/ is the only place a private key may live): stable outputs."""
    key = serialization.load_pem_private_key((GOLDEN / "dkim-test-key.pem").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return dkimkeys.public_key_b64(key)


@pytest.fixture
def store(relay_env: Path) -> Iterator[Store]:
    """The store the `cli` fixture uses, with an accountant to run the commands as."""
    opened = open_store(load_settings())
    opened.add_user(User(ACCOUNTANT, Role.ACCOUNTANT, FIXED_TIME))
    yield opened
    opened.close()


def seed(store: Store, case: Case, public_key: str, *, state: KeyState = KeyState.ACTIVE,
         selector: str = SELECTOR, created_at: datetime = FIXED_TIME,
         remove_after: datetime | None = None) -> None:
    if store.get_tenant(case.tenant) is None:
        store.save_tenant(Tenant(case.tenant, case.sender, TenantStatus.PENDING, FIXED_TIME, FIXED_TIME))
    store.add_key(DkimKey(case.tenant, selector, state, public_key,
                          dkimkeys.key_path(case.tenant, selector), created_at, remove_after))


def run_records(cli: Cli, monkeypatch: pytest.MonkeyPatch, case: Case, *args: str) -> CliResult:
    if case.dmarc_rua:
        monkeypatch.setenv("RELAY_DMARC_RUA", case.dmarc_rua)
    return cli("records", case.tenant, *args, "--as", ACCOUNTANT)


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; UPDATE_GOLDEN=1 rewrites it (review the diff before committing)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_bytes(text.encode("utf-8"))
    if not path.exists():
        pytest.fail(f"golden file {path} is missing: create it with UPDATE_GOLDEN=1 pytest {__file__}")
    # Bytes, not read_text: the CSV's CRLF line ends (RFC 4180) are part of what is compared.
    assert text == path.read_bytes().decode("utf-8"), f"output differs from {path}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_golden(cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch, golden_public_key: str,
                case_name: str, fmt: str) -> None:
    case = CASES[case_name]
    seed(store, case, golden_public_key)
    result = run_records(cli, monkeypatch, case, "--format", fmt)
    assert (result.code, result.err) == (0, "")
    assert_golden(f"{case_name}.{fmt}", result.out)


def json_records(cli: Cli, monkeypatch: pytest.MonkeyPatch, case: Case) -> list[dict[str, object]]:
    result = run_records(cli, monkeypatch, case, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert isinstance(data, list)
    return data


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_bind_snippet_loads_and_txt_joins_to_the_value(
    cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch, golden_public_key: str, case_name: str
) -> None:
    case = CASES[case_name]
    seed(store, case, golden_public_key)
    expected = json_records(cli, monkeypatch, case)
    text = run_records(cli, monkeypatch, case, "--format", "bind").out
    assert f"$ORIGIN {case.sender.domain}.\n" in text
    zone = dns.zone.from_text(text, origin=case.sender.domain, relativize=False, check_origin=False)
    found: dict[tuple[str, str], str] = {}
    for name, rdataset in zone.iterate_rdatasets():
        for rdata in rdataset:
            kind = dns.rdatatype.to_text(rdataset.rdtype)
            if kind == "TXT":
                assert all(len(piece) <= 255 for piece in rdata.strings)
                value = b"".join(rdata.strings).decode("utf-8")
            else:
                value = rdata.target.to_text(omit_final_dot=True)
            found[(kind, name.to_text(omit_final_dot=True))] = value
            assert rdataset.ttl == 3600
    assert found == {(r["type"], r["name"]): r["value"] for r in expected}
    # RFC 8301: a 2048-bit key does not fit one string, so the split is really exercised.
    dkim = zone.find_rdataset(f"{SELECTOR}._domainkey.{case.sender.domain}.", "TXT")
    assert len(next(iter(dkim)).strings) == 2


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_bind_comment_says_why_and_whether_required(
    cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch, golden_public_key: str, case_name: str
) -> None:
    case = CASES[case_name]
    seed(store, case, golden_public_key)
    lines = run_records(cli, monkeypatch, case, "--format", "bind").out.splitlines()
    records = [i for i, line in enumerate(lines) if line and not line.startswith((";", "$", " "))]
    assert len(records) == 3
    comments = []
    for index in records:
        start = index
        while lines[start - 1].startswith("; "):
            start -= 1
        assert start < index, f"no comment above {lines[index]!r}"
        comments.append(" ".join(line[2:] for line in lines[start:index]))
    assert "DKIM" in comments[0] and comments[0].endswith("Required.")
    assert "Return path" in comments[1] and comments[1].endswith("Required.")
    assert "never replace" in comments[2] and comments[2].endswith("Optional.")


@pytest.mark.parametrize("sep", [",", ";"])
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_csv_parses_back_to_the_json_records(
    cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch, golden_public_key: str, case_name: str,
    sep: str,
) -> None:
    case = CASES[case_name]
    seed(store, case, golden_public_key)
    expected = json_records(cli, monkeypatch, case)
    result = run_records(cli, monkeypatch, case, "--format", "csv", "--sep", sep)
    assert (result.code, result.err) == (0, "")
    rows = list(csv.reader(io.StringIO(result.out, newline=""), delimiter=sep))
    assert rows[0] == ["type", "name", "host", "value", "ttl", "purpose", "required", "state",
                       "remove_after"]
    assert len(rows) == len(expected) + 1 and all(len(row) == 9 for row in rows)
    for row, record in zip(rows[1:], expected):
        assert row[:6] == [record["type"], record["name"], row[2], record["value"], str(record["ttl"]),
                           record["purpose"]]
        assert row[6:] == ["yes" if record["required"] else "no", record.get("state", ""), ""]
        assert f"{row[2]}.{case.sender.domain}" == row[1]
    assert ";" in rows[1][3] and rows[1][3].endswith(golden_public_key)  # the DKIM value, whole


@pytest.mark.parametrize("sep", [",", ";"])
def test_csv_is_rfc4180_every_field_quoted_crlf(
    cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch, golden_public_key: str, sep: str
) -> None:
    case = CASES["01-ascii"]
    seed(store, case, golden_public_key)
    out = run_records(cli, monkeypatch, case, "--format", "csv", "--sep", sep).out
    assert out.endswith("\r\n") and "\n" not in out.replace("\r\n", "") and "\r" not in out.replace("\r\n", "")
    field = '"[^"]*"'  # no value of ours holds a quote; RFC 4180 would double it
    for line in out.split("\r\n")[:-1]:
        assert re.fullmatch(f"{field}(?:{re.escape(sep)}{field}){{8}}", line), line


@pytest.mark.parametrize("args", [
    ("--format", "csv", "--sep", "tab"),
    ("--format", "csv", "--sep", "|"),
    ("--format", "json", "--sep", ";"),
    ("--format", "bind", "--sep", ","),
    ("--sep", ";"),  # the default format is the table
    ("--json", "--sep", ";"),
])
def test_sep_is_for_csv_only_and_only_comma_or_semicolon(
    cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch, golden_public_key: str,
    args: tuple[str, ...],
) -> None:
    case = CASES["01-ascii"]
    seed(store, case, golden_public_key)
    result = run_records(cli, monkeypatch, case, *args)
    assert (result.code, result.out) == (2, "")
    assert result.err.count("\n") == 1 and "--sep" in result.err


def test_json_shape_is_exactly_spec(cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch,
                                    golden_public_key: str) -> None:
    case = CASES["02-idn"]
    seed(store, case, golden_public_key)
    records = json_records(cli, monkeypatch, case)
    base = {"type", "name", "value", "ttl", "purpose", "required"}
    assert [r["purpose"] for r in records] == ["dkim", "return-path", "dmarc"]
    dkim, return_path, dmarc = records
    assert set(dkim) == base | {"state"} and dkim["state"] == "active"
    assert set(return_path) == base and set(dmarc) == base
    assert dkim == {
        "type": "TXT", "name": f"{SELECTOR}._domainkey.{IDN_DOMAIN}",
        "value": f"v=DKIM1; k=rsa; p={golden_public_key}", "ttl": 3600, "purpose": "dkim",
        "required": True, "state": "active",
    }
    assert return_path == {"type": "CNAME", "name": f"retour.{IDN_DOMAIN}", "value": "bounces.relay.test",
                           "ttl": 3600, "purpose": "return-path", "required": True}
    assert dmarc == {"type": "TXT", "name": f"_dmarc.{IDN_DOMAIN}",
                     "value": "v=DMARC1; p=none; rua=mailto:dmarc@reports.relay.test",
                     "ttl": 3600, "purpose": "dmarc", "required": False}


def test_json_flag_is_format_json_and_table_is_default(
    cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch, golden_public_key: str
) -> None:
    case = CASES["01-ascii"]
    seed(store, case, golden_public_key)
    assert run_records(cli, monkeypatch, case, "--json").out == \
        run_records(cli, monkeypatch, case, "--format", "json").out
    assert run_records(cli, monkeypatch, case).out == \
        run_records(cli, monkeypatch, case, "--format", "table").out
    conflict = run_records(cli, monkeypatch, case, "--json", "--format", "bind")
    assert conflict.code == 2 and conflict.out == ""
    assert conflict.err.count("\n") == 1 and "--format" in conflict.err


def test_retiring_and_next_keys_are_still_published(
    cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch, golden_public_key: str
) -> None:
    case = CASES["01-ascii"]
    later = FIXED_TIME.replace(hour=13)
    seed(store, case, golden_public_key, state=KeyState.RETIRING, selector="arold",
         created_at=FIXED_TIME.replace(hour=11), remove_after=KEEP_UNTIL)
    seed(store, case, golden_public_key)
    seed(store, case, golden_public_key, state=KeyState.NEXT, selector="arnext", created_at=later)
    dkim = [r for r in json_records(cli, monkeypatch, case) if r["purpose"] == "dkim"]
    assert [(str(r["name"]).split(".")[0], r["state"], r["required"]) for r in dkim] == [
        ("arold", "retiring", False), (SELECTOR, "active", True), ("arnext", "next", True)]
    bind = run_records(cli, monkeypatch, case, "--format", "bind").out
    assert "(selector arold): retiring: keep until 2099-01-08 12:00 UTC, then remove. Optional." \
        in " ".join(line.removeprefix("; ") for line in bind.splitlines())
    assert "(selector arnext): next: publish now, the relay switches to it once validated. Required." \
        in " ".join(line.removeprefix("; ") for line in bind.splitlines())
    zone = dns.zone.from_text(bind, origin=case.sender.domain, check_origin=False)
    assert {"arold._domainkey", "arnext._domainkey"} <= {n.to_text() for n in zone.nodes}


def test_json_carries_state_remove_after_and_what_to_do(
    cli: Cli, store: Store, monkeypatch: pytest.MonkeyPatch, golden_public_key: str
) -> None:
    case = CASES["01-ascii"]
    seed(store, case, golden_public_key, state=KeyState.RETIRING, selector="arpast",
         created_at=FIXED_TIME.replace(hour=10), remove_after=FIXED_TIME)
    seed(store, case, golden_public_key, state=KeyState.RETIRING, selector="arold",
         created_at=FIXED_TIME.replace(hour=11), remove_after=KEEP_UNTIL)
    seed(store, case, golden_public_key)
    seed(store, case, golden_public_key, state=KeyState.NEXT, selector="arnext",
         created_at=FIXED_TIME.replace(hour=13))
    past, old, active, new = [r for r in json_records(cli, monkeypatch, case) if r["purpose"] == "dkim"]
    assert (past["state"], past["remove_after"]) == ("retiring", "2024-01-01T12:00:00+00:00")
    assert str(past["note"]).startswith("safe to remove since 2024-01-01 12:00 UTC")
    assert (old["state"], old["remove_after"]) == ("retiring", KEEP_UNTIL.isoformat())
    assert "keep it published until 2099-01-08 12:00 UTC, then remove it" in str(old["note"])
    assert "note" not in active and "remove_after" not in active
    assert "remove_after" not in new and "published" in str(new["note"])
    assert "first validation" in str(new["note"])
    table = run_records(cli, monkeypatch, case).out
    assert "dkim (next)" in table and "dkim (retiring)" in table
    notes = table.split("\nKey change:\n", 1)[1].splitlines()
    assert [line.split(" (")[0].strip() for line in notes] == [
        f"{s}._domainkey.acme.test" for s in ("arpast", "arold", "arnext")]
    rows = list(csv.reader(io.StringIO(run_records(cli, monkeypatch, case, "--format", "csv").out)))
    assert [row[7:] for row in rows[1:5]] == [["retiring", "2024-01-01 12:00 UTC"],
                                              ["retiring", "2099-01-08 12:00 UTC"],
                                              ["active", ""], ["next", ""]]
    bind = " ".join(run_records(cli, monkeypatch, case, "--format", "bind").out.split("\n; "))
    assert "(selector arpast): retiring: safe to remove since 2024-01-01 12:00 UTC. Optional." in bind


def test_unknown_tenant_is_exit_2_in_one_line(cli: Cli, store: Store) -> None:
    result = cli("records", "nobody", "--as", ACCOUNTANT)
    assert (result.code, result.out) == (2, "")
    assert result.err.count("\n") == 1 and "'nobody'" in result.err


@pytest.mark.parametrize("length", [0, 1, 254, 255, 256, 510, 511, 766])
def test_split_txt_pieces_are_at_most_255_and_join_back(length: int) -> None:
    value = "".join(chr(ord("a") + i % 26) for i in range(length))
    pieces = split_txt(value)
    assert "".join(pieces) == value
    assert all(len(piece) <= 255 for piece in pieces)
    assert len(pieces) == max(1, -(-length // 255))


def test_split_txt_counts_octets_and_never_cuts_a_character() -> None:
    value = "x" * 254 + "é" + "y"  # é is two octets: it cannot end the first 255-octet string
    assert split_txt(value) == ["x" * 254, "éy"]


def test_quoted_strings_parse_back_to_the_same_octets() -> None:
    value = 'a "quoted" back\\slash; é ' + "z" * 300
    text = " ".join(quote_txt(piece) for piece in split_txt(value))
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)
    assert b"".join(rdata.strings).decode("utf-8") == value  # type: ignore[attr-defined]
