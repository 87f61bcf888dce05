"""dnspython's failures to find a domain's servers reach the customer in plain words, not library text."""

from __future__ import annotations

import dns.resolver

from relay.domains.dnscheck import _plain


def test_no_zone_up_to_the_root_names_the_likely_causes() -> None:
    words = _plain(dns.resolver.NoRootSOA())
    assert "not registered" in words and "spelling" in words
    assert "should never happen" not in words  # dnspython's own text


def test_timeout_and_failing_servers_are_said_plainly() -> None:
    assert _plain(dns.resolver.LifetimeTimeout(timeout=1.0, errors=[])) == "the resolver did not answer in time"
    assert "SERVFAIL or REFUSED" in _plain(dns.resolver.NoNameservers())
