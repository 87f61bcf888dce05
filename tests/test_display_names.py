"""Display names: what any decoder makes of our From is exactly the name we accepted, and a name that
is itself MIME-encoded text is refused when it is typed."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.headerregistry import AddressHeader
from email.utils import getaddresses, parseaddr

import pytest

from admin import inputs
from admin.context import UsageError
from relay.core.models import Sender, Tenant, TenantStatus
from relay.mail.mailbox import mailbox_field
from relay.mail.rewrite import Identity, rewrite_headers
from relay.policy.senders import decide_identity
from tests.conftest import CliResult

ADDRESS = "billing@acme.test"
CRLF_BCC = "=?utf-8?b?eA0KQmNjOiBzcHlAYmFuay5jb20=?="  # decodes to "x\r\nBcc: spy@bank.com"
RLO = "=?utf-8?b?4oCuZXZpbA==?="  # decodes to U+202E (right-to-left override) + "evil"

TRICKY = [
    "Acme BV",
    "Société Générale — Überweisungen & Co. 日本",
    "日本語の会社",
    'Acme "the best" BV',
    "Back\\slash BV",
    "Trailing\\",
    '"',
    'Evil" <ceo@bank.test>, "x',
    "ceo@bank.test",
    "(comment) Acme; BV, <x>",
    "Acme  BV",
    CRLF_BCC,  # already in a store from before the input check: shown as the text it is
    RLO,
    f'"{RLO}"',
    f"Acme {CRLF_BCC} BV",
    "=?utf-8?q?Acme?=",
    "Acme =? BV ?=",
    "=?",
    "ends with ?=",
    "Ünïcödé =?utf-8?q?x?=",
    "שלום Acme",  # right-to-left letters are text; only the bidi controls are refused
    "A" * 100,
    "é" * 100,
    "日本" * 50,
    "\U0001F600" * 100,  # four UTF-8 octets each
    "Acme " * 20 + "BV",
]


def short(name: str) -> str:
    """A test id: the name's start, and its length when that is cut."""
    return ascii(name[:16]) + (f"+{len(name)}" if len(name) > 16 else "")


def rendered(name: str, address: str = ADDRESS) -> bytes:
    """A whole message as the relay writes its header for this display name."""
    return rewrite_headers(
        b"Subject: hi\r\n\r\nbody\r\n",
        identity=Identity(name, address, None),
        tenant_header="X-Relay-Tenant",
        received=b"Received: from app by relay.test; Fri, 14 Mar 2025 09:26:53 +0000\r\n",
        message_id_domain="relay.test",
        now=datetime(2025, 3, 14, tzinfo=timezone.utc),
    )


def by_default_policy(message: bytes) -> tuple[str, str]:
    """Python's modern parser (policy=default): the From header's one address."""
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    header = parsed["From"]
    assert isinstance(header, AddressHeader)
    (address,) = header.addresses
    return address.display_name, address.addr_spec


def by_compat32(message: bytes) -> tuple[str, str]:
    """Python's legacy parser (compat32): parseaddr, then RFC 2047 decoding of the name."""
    value = email.message_from_bytes(message, policy=email.policy.compat32)["From"]
    name, address = parseaddr(str(value))
    return str(make_header(decode_header(name))), address


def by_getaddresses(message: bytes) -> tuple[str, str]:
    value = email.message_from_bytes(message, policy=email.policy.compat32).get_all("From")
    ((name, address),) = getaddresses([str(v) for v in value or []])
    return str(make_header(decode_header(name))), address


def by_lenient_decoder(message: bytes) -> tuple[str, str]:
    """A client that decodes encoded words anywhere in the raw value, quoted strings included."""
    raw = re.search(rb"(?mi)^from:((?:.*\r\n)(?:[ \t].*\r\n)*)", message)
    assert raw is not None
    value = raw.group(1).replace(b"\r\n", b"").decode("ascii").strip()
    decoded = str(make_header(decode_header(value)))
    name, _, address = decoded.rpartition(" <")
    if value.startswith('"'):
        name = re.sub(r"\\(.)", r"\1", name[1:-1])  # RFC 5322 3.2.4 quoted-pair
    return name, address.removesuffix(">")


DECODERS: dict[str, Callable[[bytes], tuple[str, str]]] = {
    "default": by_default_policy,
    "compat32": by_compat32,
    "getaddresses": by_getaddresses,
    "lenient": by_lenient_decoder,
}


@pytest.mark.parametrize("decoder", DECODERS.values(), ids=DECODERS.keys())
@pytest.mark.parametrize("name", TRICKY, ids=short)
def test_every_decoder_reads_exactly_the_name(name: str, decoder: Callable[[bytes], tuple[str, str]]) -> None:
    message = rendered(name)
    assert decoder(message) == (name, ADDRESS)
    assert max(len(line) for line in message.split(b"\r\n")) <= 998  # RFC 5322 2.1.1
    assert message.isascii()


@pytest.mark.parametrize("name", [CRLF_BCC, RLO, f'"{RLO}"', "Acme =?x?= BV", "=?"])
def test_encoded_word_syntax_never_stands_in_a_quoted_string(name: str) -> None:
    """RFC 2047 5(3): an encoded word must not appear within a quoted-string; lenient decoders decode
    it there anyway. A name with `=?` is written as an encoded word of the whole name instead."""
    field = mailbox_field("From", name, ADDRESS)
    assert b'"' not in field
    assert field.startswith(b"From: =?utf-8?b?")


def test_plain_ascii_names_stay_a_readable_quoted_string() -> None:
    assert mailbox_field("From", "Acme BV", ADDRESS) == b'From: "Acme BV" <billing@acme.test>\r\n'


def a_tenant(tenant_id: str, name: str, status: TenantStatus) -> Tenant:
    now = datetime(2025, 3, 14, tzinfo=timezone.utc)
    sender = Sender(name=name, email=f"billing@{tenant_id}.test", domain=f"{tenant_id}.test",
                    return_path_label="bounce")
    return Tenant(id=tenant_id, sender=sender, status=status, created_at=now, updated_at=now)


@pytest.mark.parametrize("tenant_name", ["Acme BV", CRLF_BCC, "Société Générale " * 5, "\U0001F600" * 100],
                         ids=short)
@pytest.mark.parametrize("platform_name", ["Accounton", RLO, "Plätform " * 11, "\U0001F600" * 100], ids=short)
@pytest.mark.parametrize("decoder", DECODERS.values(), ids=DECODERS.keys())
def test_via_fallback_decodes_to_exactly_the_combined_name(
    tenant_name: str, platform_name: str, decoder: Callable[[bytes], tuple[str, str]],
) -> None:
    tenant = a_tenant("acme", tenant_name.strip(), TenantStatus.PENDING)
    platform = a_tenant("platform", platform_name.strip(), TenantStatus.VERIFIED)
    send_as = decide_identity(tenant, {"acme": tenant, "platform": platform}, platform_sender="platform")
    combined = f"{tenant_name.strip()} via {platform_name.strip()}"
    assert send_as.identity.display_name == combined
    message = rendered(combined, platform.sender.email)
    assert decoder(message) == (combined, platform.sender.email)
    assert max(len(line) for line in message.split(b"\r\n")) <= 998


@pytest.mark.parametrize("typed", [
    CRLF_BCC,
    RLO,
    "Acme =?utf-8?q?BV?=",
    "=?iso-8859-1?q?Soci=E9t=E9?=",
    "=?UTF-8?B?QWNtZQ==?= BV",
    "=?x?y?z?=",
])
def test_typed_encoded_words_are_refused_in_one_line(typed: str) -> None:
    with pytest.raises(UsageError) as caught:
        inputs.display_name(typed)
    message = str(caught.value)
    assert message.startswith(f"--name: {typed!r} looks like MIME-encoded text")
    assert "type the name itself" in message
    assert "\n" not in message and "\r" not in message


def test_a_refused_encoded_word_suggests_its_text_when_that_is_a_clean_name() -> None:
    with pytest.raises(UsageError) as caught:
        inputs.display_name("=?iso-8859-1?q?Soci=E9t=E9_G=E9n=E9rale?=")
    assert str(caught.value).endswith("type the name itself, e.g. 'Société Générale'")
    with pytest.raises(UsageError) as caught:
        inputs.display_name(CRLF_BCC)  # decodes to a line break: nothing to suggest
    assert "e.g." not in str(caught.value)


@pytest.mark.parametrize("typed", ["\u202eevil", "Acme\u2066BV"])
def test_bidi_controls_typed_directly_are_refused(typed: str) -> None:
    with pytest.raises(UsageError, match="control character"):
        inputs.display_name(typed)


@pytest.mark.parametrize("typed", ["Acme =? BV", "What?=", "a=b?c", "Société Générale", "שלום"])
def test_names_that_merely_contain_the_characters_are_accepted(typed: str) -> None:
    assert inputs.display_name(typed) == typed


def test_tenant_set_refuses_an_encoded_word_name_with_exit_2(cli: Callable[..., CliResult]) -> None:
    assert cli("user", "add", "alice", "--role", "owner").code == 0
    result = cli("tenant", "set", "acme", "--name", CRLF_BCC, "--email", ADDRESS, "--domain", "acme.test",
                 "--as", "alice")
    assert result.code == 2 and result.out == ""
    assert result.err == (f"relay-admin: --name: {CRLF_BCC!r} looks like MIME-encoded text (RFC 2047); "
                          "type the name itself\n")
    assert cli("tenant", "list", "--as", "alice", "--json").out.strip() in ("[]", "")


def test_a_name_too_long_for_one_line_is_split_and_rfc_2047_decoders_read_it_whole() -> None:
    """Beyond what `--name` accepts, with no plain word to cut at: adjacent encoded words, each on a
    line of its own. RFC 2047 6.2 decoders join them; Python's policy=default puts a space between."""
    for name in ("é" * 800, "é " + "A" * 1500 + " é", "A" * 2000):
        message = rendered(name)
        assert max(len(line) for line in message.split(b"\r\n")) <= 998
        for decoder in (by_compat32, by_getaddresses, by_lenient_decoder):
            assert decoder(message) == (name, ADDRESS)
