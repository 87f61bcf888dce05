"""A receiver's verdict on one relayed message: what SPF, DKIM and DMARC would say, and why.

    judge(message, mail_from=, client_ip=, dns=) -> Verdict(spf, dkim, dmarc), each a Check
    outbox_envelope(eml) -> (mail_from, recipients, message) for a file the outbox upstream wrote

Modules: `model` (Check, Verdict, Result), `lookup` (DnsLookup and ResolverLookup, on
relay.domains.dnscheck's uncached client), `spfrecord` (SPF parsing and macros, pure), `spf` (check_host,
RFC 7208), `dkimcheck` (RFC 6376 verification with dkimpy), `dmarc` (RFC 7489 with the RFC 9989
tree walk), `judge` (the message and its envelope). DNS that cannot answer is temperror, worded
"could not check", in every mechanism: never fail, never none.
"""

from relay.domains.receiver.judge import judge, outbox_envelope
from relay.domains.receiver.lookup import (
    DnsAnswer,
    DnsLookup,
    ResolverLookup,
    TxtAnswer,
)
from relay.domains.receiver.model import Check, Result, Verdict

__all__ = [
    "Check", "DnsAnswer", "DnsLookup", "ResolverLookup", "Result", "TxtAnswer", "Verdict", "judge",
    "outbox_envelope",
]
