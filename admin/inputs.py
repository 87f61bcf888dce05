"""Pure input checks for admin commands: each returns the normalised value or raises one-line `UsageError`.

Every message starts with the field as the user typed it (`--email: ...`, `TENANT: ...`) and shows the
offending value with `repr`, so control characters are escaped and the message stays on one line.
Each error also carries a stable `code` and its `params` (the same rendered values the line shows),
so the settings page can say it in Dutch or French; the English line stays the CLI's.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from functools import lru_cache
from urllib.parse import urlsplit

import idna

from admin.context import UsageError

IDENTIFIER = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_DISPLAY_NAME = 100
# RFC 5322 3.2.3 atext; RFC 5321 4.1.2 Dot-string is atoms of it joined by single dots.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3: a path is at most 256 octets including "<" and ">"
MAX_DOMAIN = 253  # RFC 1035 2.3.4, as text without the trailing dot
# Longest name we publish below the domain: `<selector>._domainkey.` with a 16-character selector
# (`ar` + YYYYMMDD + 6 hex); the domain must leave room for it (RFC 1035 2.3.4).
_DKIM_PREFIX = len("ar20250101abcdef._domainkey.")
# Bidi embedding/override/isolate controls (Unicode Cf) can reorder how a display name is shown;
# the rest of Cf (ZWJ, ZWNJ) is needed by some scripts and stays allowed.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# RFC 2047 2 encoded-word `=?charset?encoding?text?=`, matched as loosely as lenient decoders read it.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[^?]*\?.*?\?=", re.S)
_PORT = re.compile(r"([^:]+):[0-9]+")
# `Acme <info@acme.nl>`: a whole From line pasted where only the address goes (RFC 5322 3.4).
_NAME_ADDR = re.compile(r"(.*)<([^<>]*)>\s*")
MAX_LABEL = 63  # RFC 1035 2.3.4


@dataclass(frozen=True)
class _Why:
    """A refusal before its field is named: the CLI's words, and the code and values for a page."""

    text: str
    code: str
    params: dict[str, str]


def _fail(field: str, problem: str, code: str, **params: str) -> UsageError:
    """`FIELD: problem` for the CLI; `code` and `params` (rendered as in `problem`) for the page."""
    return UsageError(f"{field}: {problem}", code=code, params=params)


def _fail_why(field: str, why: _Why) -> UsageError:
    return _fail(field, why.text, why.code, **why.params)


def identifier(value: str, field: str, what: str) -> str:
    """Tenant id, user name, client name: used in paths and logs, so a narrow alphabet."""
    if not IDENTIFIER.fullmatch(value):
        raise _fail(
            field,
            f"{value!r} is not a valid {what} (1-63 characters: a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit)",
            code="identifier_invalid", value=repr(value), what=what,
        )
    return value


def _control_char(text: str) -> str | None:
    """The first character a display name may not hold, or None."""
    for char in text:
        category = unicodedata.category(char)
        # Cc covers CR, LF, NUL, ESC, DEL; Zl/Zp are Unicode line breaks; Cs are undecodable bytes.
        if category in ("Cc", "Zl", "Zp", "Cs") or char in _BIDI_CONTROLS:
            return char
    return None


def display_name(value: str, field: str = "--name") -> str:
    """The From display name: any text without line breaks or control characters, at most 100."""
    char = _control_char(value)
    if char is not None:
        code_point = f"U+{ord(char):04X}"
        raise _fail(field, f"contains the control character {code_point}; use plain text",
                    code="name_control_char", char=code_point)
    name = value.strip()
    if not name:
        raise _fail(field, "must not be empty", code="empty")
    if len(name) > MAX_DISPLAY_NAME:
        raise _fail(field, f"is {len(name)} characters long; at most {MAX_DISPLAY_NAME}",
                    code="name_too_long", length=str(len(name)), max=str(MAX_DISPLAY_NAME))
    if _ENCODED_WORD.search(name):
        # RFC 2047: a receiver would decode it, so the name shown would not be the one typed (and
        # could hold what is refused above: `=?utf-8?b?4oCu...?=` is U+202E).
        raise _fail_why(field, _encoded_name(value, name))
    return name


def _encoded_name(value: str, name: str) -> _Why:
    """MIME-encoded text typed as a name: with what it says, when that is itself an acceptable name."""
    text = f"{value!r} looks like MIME-encoded text (RFC 2047); type the name itself"
    decoded = _decoded(name)
    if decoded is None:
        return _Why(text, code="name_encoded", params={"value": repr(value)})
    return _Why(f"{text}, e.g. {decoded!r}", code="name_encoded_example",
                params={"value": repr(value), "example": repr(decoded)})


def _decoded(name: str) -> str | None:
    """What the encoded text says (`Société`), when that is itself an acceptable name; else None."""
    try:
        decoded = str(make_header(decode_header(name))).strip()
    except (ValueError, LookupError, UnicodeError, HeaderParseError):
        return None
    clean = (decoded and len(decoded) <= MAX_DISPLAY_NAME and _control_char(decoded) is None
             and not _ENCODED_WORD.search(decoded))
    return decoded if clean else None


def _printable(exc: Exception) -> str:
    # Library messages may quote the input; keep only printable characters so they stay one line.
    text = str(exc) or type(exc).__name__
    return "".join(ch if ch.isprintable() else f"U+{ord(ch):04X}" for ch in text)


def _char(char: str) -> str:
    """A character as a message shows it: itself when printable, always its code point."""
    return "a space" if char == " " else _code_point(char)


def _code_point(char: str) -> str:
    """`'!' (U+0021)`, or `U+0009` when not printable: the same in every language (a page's params)."""
    code = f"U+{ord(char):04X}"
    return f"{char!r} ({code})" if char.isprintable() else code


def _example(candidate: str | None) -> str:
    """The domain the user probably meant, when it is one; otherwise a plain example."""
    try:
        return unicode_domain(domain(candidate or "")) if candidate else "acme.nl"
    except UsageError:
        return "acme.nl"


def _domain_hint(text: str, value: str) -> _Why | None:
    """The usual things pasted instead of a bare domain, each with the domain to give instead."""
    only = "give only the domain, e.g."
    shown = repr(value)
    if "://" in text or "/" in text:
        example = _example(urlsplit(text if "://" in text else "//" + text).hostname)
        return _Why(f"{shown} is a web address (URL); {only} {example}", code="domain_is_url",
                    params={"value": shown, "example": example})
    if "@" in text:
        example = _example(text.rpartition("@")[2])
        return _Why(f"{shown} is an e-mail address; {only} {example}", code="domain_is_email",
                    params={"value": shown, "example": example})
    port = _PORT.fullmatch(text)
    if port:
        example = _example(port.group(1))
        return _Why(f"{shown} has a port; {only} {example}", code="domain_has_port",
                    params={"value": shown, "example": example})
    for char in text:
        # Cf (ZWJ, ZWNJ) stays for IDNA to judge: some scripts need it (RFC 5892 Appendix A).
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cs"):
            line = f"{shown} contains {_char(char)}; a domain name has no spaces or control characters"
            if char == " ":  # "a space" in words: a page says it in its own
                return _Why(line, code="domain_has_space", params={"value": shown})
            return _Why(line, code="domain_has_control", params={"value": shown, "char": _code_point(char)})
    return None


@lru_cache(maxsize=1024)
def _allowed_somewhere(char: str) -> bool:
    # IDNA rules depend on context (a mark after a letter, '-' inside a label, a right-to-left
    # letter on its own), so a character counts as allowed if any simple label accepts it.
    for label in (char, "a" + char, "a" + char + "a"):
        try:
            idna.encode(label, uts46=True, std3_rules=True)
            return True
        except (idna.IDNAError, UnicodeError):
            pass
    return False


def _valid_label(label: str) -> bool:
    try:
        idna.encode(label, uts46=True, std3_rules=True)
        return True
    except (idna.IDNAError, UnicodeError):
        return False


def _label_problem(value: str, label: str) -> _Why:
    """Why one part between dots is refused, in words (IDNA 2008, RFC 5891 4.2.3)."""
    shown = repr(value)
    if not label:
        return _Why(f"{shown} has an empty part (two dots in a row, or a dot at the start)",
                    code="domain_empty_label", params={"value": shown})
    if len(label) > MAX_LABEL:
        start = repr(label[:20])
        return _Why(f"{shown} has a part longer than {MAX_LABEL} characters ({start}...)",
                    code="domain_label_too_long",
                    params={"value": shown, "label": start, "max": str(MAX_LABEL)})
    part = {"value": shown, "label": repr(label)}
    if label.startswith("-") or label.endswith("-"):
        return _Why(f"{shown} has a part that starts or ends with '-' ({label!r})",
                    code="domain_label_hyphen", params=part)
    if label.lower().startswith("xn--"):
        return _Why(f"{shown} has a part starting with 'xn--' that is not a valid encoded name "
                    f"({label!r})", code="domain_label_bad_xn", params=part)
    if label[2:4] == "--":
        return _Why(f"{shown} has '--' as 3rd and 4th character ({label!r}); only encoded names "
                    "(xn--) may", code="domain_label_double_hyphen", params=part)
    return _Why(f"{shown} has a part whose characters cannot stand together ({label!r}), such as "
                "left-to-right and right-to-left letters, or a joiner or mark out of place",
                code="domain_label_mixed", params=part)


def _idna_problem(text: str, value: str) -> _Why:
    """The IDNA library's refusal in plain words: the offending character, else the offending part."""
    shown = repr(value)
    for char in text:
        if char != "." and not _allowed_somewhere(char):
            return _Why(f"{shown} contains {_char(char)}, which a domain name cannot have",
                        code="domain_bad_char", params={"value": shown, "char": _code_point(char)})
    for label in text.split("."):
        if not _valid_label(label):
            return _label_problem(value, label)
    # Each part is fine alone, the whole is not (too long, or right-to-left rules across parts).
    return _Why(f"{shown} is not a valid domain name", code="domain_invalid", params={"value": shown})


def domain(value: str, field: str = "--domain") -> str:
    """A host name in lower-case A-labels without trailing dot (IDNA 2008 with UTS 46 mapping)."""
    text = value.strip(" ")  # spaces around a pasted value are noise, not part of the name
    text = text[:-1] if text.endswith(".") else text
    if not text:
        raise _fail(field, "must not be empty", code="empty")
    hint = _domain_hint(text, value)
    if hint:
        raise _fail_why(field, hint)
    if "" in text.split("."):  # IDNA would take "acme.nl.." as "acme.nl." and say nothing useful
        raise _fail_why(field, _label_problem(value, ""))
    try:
        ascii_name = idna.encode(text, uts46=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise _fail_why(field, _idna_problem(text, value)) from None
    shown = repr(value)
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise _fail(field, f"{shown} needs at least two parts separated by a dot, like acme.nl",
                    code="domain_one_label", value=shown)
    if labels[-1].isdigit():  # RFC 3696 2: a top-level domain is never all-numeric (an IP address)
        raise _fail(field, f"{shown} is an IP address, not a domain name", code="domain_is_ip",
                    value=shown)
    # The last two are a safety net: IDNA already refuses what they would (kept in case it changes).
    if not all(_LDH_LABEL.fullmatch(label) for label in labels):
        raise _fail(field, f"{shown}: each part between dots must be letters, digits and '-'",
                    code="domain_not_ldh", value=shown)
    if len(ascii_name) > MAX_DOMAIN:
        raise _fail(field, f"{shown} is longer than {MAX_DOMAIN} characters", code="domain_too_long",
                    value=shown, max=str(MAX_DOMAIN))
    return ascii_name


def unicode_domain(ascii_name: str) -> str:
    """An A-label domain as people read it (U-labels); the A-label form if it cannot be decoded."""
    try:
        return str(idna.decode(ascii_name))
    except ValueError:  # idna.IDNAError and UnicodeError are both ValueErrors
        return ascii_name


def sender_domain(value: str, field: str = "--domain") -> str:
    """`domain` that also leaves room for the DKIM record name published below it."""
    name = domain(value, field)
    if len(name) + _DKIM_PREFIX > MAX_DOMAIN:
        raise _fail(
            field,
            f"{value!r} is too long: the DKIM record name below it would exceed {MAX_DOMAIN} characters",
            code="domain_too_long_for_dkim", value=repr(value), max=str(MAX_DOMAIN),
        )
    return name


def email(value: str, field: str = "--email") -> str:
    """`local@domain`: RFC 5321 dot-atom local part (ASCII, kept as typed), domain as A-labels."""
    if not value.strip():  # as for the name and the domain: asked for, not explained (the page's "Vul ... in")
        raise _fail(field, "must not be empty", code="empty")
    _no_display_name(value, field)
    shown = repr(value)
    local, at, host = value.rpartition("@")
    if not at or not local or not host:
        raise _fail(field, f"{shown} is not an e-mail address (local@domain)",
                    code="email_not_address", value=shown)
    if not _DOT_ATOM.fullmatch(local):
        raise _fail(
            field,
            f"{shown}: the part before '@' must be ASCII letters, digits or !#$%&'*+/=?^_`{{|}}~- "
            "in dot-separated parts (RFC 5321 4.1.2)",
            code="email_local_chars", value=shown,
        )
    if len(local) > MAX_LOCAL_PART:
        raise _fail(field, f"{shown}: the part before '@' is longer than {MAX_LOCAL_PART} characters",
                    code="email_local_too_long", value=shown, max=str(MAX_LOCAL_PART))
    host_ascii = domain(host, field)
    address = f"{local}@{host_ascii}"
    if len(address) > MAX_ADDRESS:
        raise _fail(field, f"{shown} is longer than {MAX_ADDRESS} characters", code="email_too_long",
                    value=shown, max=str(MAX_ADDRESS))
    return address


def _no_display_name(value: str, field: str) -> None:
    """A name or `mailto:` pasted with the address: say where each part goes instead."""
    pasted = _NAME_ADDR.fullmatch(value)
    shown = repr(value)
    if pasted:
        example = repr(pasted.group(2).strip())
        if pasted.group(1).strip(' "'):
            # The sender's own form has a Name field to put it in; another address (--to) has none.
            sender = field == "--email"
            name = "put the name in --name and " if sender else ""
            raise _fail(field, f"{shown} has a name in it; {name}give only the address in {field}, "
                               f"e.g. {example}", code="email_has_name" if sender else "address_has_name",
                        value=shown, example=example)
        raise _fail(field, f"{shown}: give the address without '<' and '>', e.g. {example}",
                    code="email_angle_brackets", value=shown, example=example)
    if value.lower().startswith("mailto:"):
        example = repr(value[7:])
        raise _fail(field, f"{shown}: give the address without 'mailto:', e.g. {example}",
                    code="email_mailto", value=shown, example=example)


def email_within_domain(address: str, sender_domain_: str, field: str = "--email") -> None:
    """The address's domain is the domain itself or a name below it (SPEC.md; DMARC alignment)."""
    host = address.rpartition("@")[2]
    if host != sender_domain_ and not host.endswith("." + sender_domain_):
        raise _fail(
            field,
            f"the address's domain {host!r} is not {sender_domain_!r} or a name below it",
            code="email_outside_domain", host=repr(host), domain=repr(sender_domain_),
        )


def return_path_label(value: str, field: str = "--return-path") -> str:
    """One LDH label (RFC 1035 2.3.1) below the domain, clear of the names DKIM and DMARC use."""
    label = value.lower()
    if label == "_dmarc" or label.endswith("_domainkey"):
        raise _fail(field, f"{value!r} is reserved for DMARC/DKIM records; choose another label",
                    code="return_path_reserved", value=repr(value))
    if not _LDH_LABEL.fullmatch(label):
        raise _fail(
            field,
            f"{value!r} is not a single DNS label (1-63 characters: letters, digits, '-' inside; no dots)",
            code="return_path_not_label", value=repr(value),
        )
    return label


def return_path_clear_of_address(label: str, address: str, sender_domain_: str,
                                 field: str = "--return-path") -> None:
    """The return-path CNAME must stand alone (RFC 1034 3.6.2), so it cannot be the mail domain."""
    host = f"{label}.{sender_domain_}"
    if address.rpartition("@")[2] == host:
        raise _fail(field, f"{host!r} is the address's own domain; choose another label",
                    code="return_path_is_address_domain", host=repr(host))


def network(value: str, field: str = "--network") -> str:
    """A CIDR network without host bits (`10.1.0.0/16`, `2001:db8::/48`), in canonical form."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError as exc:
        detail = _printable(exc)
        raise _fail(field, f"{detail} (use CIDR form, e.g. 10.1.0.0/16)", code="network_invalid",
                    detail=detail) from None
