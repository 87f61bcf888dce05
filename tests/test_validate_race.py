"""No lost updates: a `tenant set` committed while validate waits for DNS survives, and the old verdict
is discarded (SPEC.md "Lifecycle"; issue 8, item 4). The race is made deterministic: the DNS client
runs the other process's change while the questions are in flight."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from admin.tenants import set_tenant
from relay.core.models import KeyState, Sender, TenantStatus
from relay.core.settings import Settings, load_settings
from relay.domains.dnscheck import DnsClient, Finding, Question
from relay.domains.validation import CHANGED_DURING_CHECK, validate_tenant
from tests.snapshot import open_store
from tests.test_revalidate import next_key
from tests.test_validate import Cli, Site, make_site

__all__ = ["make_site"]  # a fixture, imported for pytest

MakeSite = Callable[..., Site]


class RacingClient(DnsClient):
    """Runs `during` (another process's write) once the questions are asked, before the answers."""

    def __init__(self, settings: Settings, during: Callable[[], object]) -> None:
        super().__init__(settings)
        self.during, self.asked = during, 0

    async def ask_all(self, questions: Iterable[Question]) -> dict[Question, Finding]:
        self.asked += 1
        self.during()
        return await super().ask_all(questions)


def other_process_sets(relay_env: Path, sender: Sender) -> Callable[[], None]:
    """`tenant set acme ...` through its own store connection, as a second process would."""

    def run() -> None:
        store = open_store(relay_env)
        try:
            set_tenant(store, relay_env / "keys", "acme", sender, actor="olivia")
        finally:
            store.close()

    return run


@pytest.fixture
def verified_site(make_site: MakeSite) -> Site:
    """A verified tenant whose records are all published: an old verdict would say `verified`."""
    site = make_site(status=TenantStatus.VERIFIED)
    site.serve(f"{site.dkim()}\n{site.cname}")
    return site


async def test_tenant_set_during_the_check_survives_and_the_verdict_is_discarded(
    verified_site: Site, relay_env: Path
) -> None:
    site, settings = verified_site, load_settings()
    new = Sender("Acme Invoices", "invoices@acme.test", "acme.test")
    client = RacingClient(settings, other_process_sets(relay_env, new))
    report = await validate_tenant(site.store, settings, "acme", actor="olivia", client=client)
    assert client.asked == 1
    assert report.discarded == CHANGED_DURING_CHECK and report.verified is False
    tenant = site.reload()
    assert tenant.sender == new, "the concurrent tenant set is not reverted"
    assert tenant.status is TenantStatus.PENDING, "the old verdict (verified) was not applied"
    keys = site.store.list_keys("acme")
    [active] = [k for k in keys if k.state is KeyState.ACTIVE]
    assert active.selector != site.key.selector, "the new key stays the active one"
    assert site.store.latest_checks("acme") == [], "checks of the old records are not stored"
    assert tenant.last_validated_at is None
    assert site.store.list_audit("acme")[-1].detail == f"discarded: {CHANGED_DURING_CHECK}"


async def test_a_name_only_change_during_the_check_keeps_the_name_and_the_verdict(
    verified_site: Site, relay_env: Path
) -> None:
    site, settings = verified_site, load_settings()
    renamed = Sender("Acme Renamed", site.tenant.sender.email, "acme.test")
    site.store.save_lifecycle("acme", status=TenantStatus.DEGRADED, failing_since=site.tenant.created_at,
                              verified_at=None, last_validated_at=None)
    client = RacingClient(settings, other_process_sets(relay_env, renamed))
    report = await validate_tenant(site.store, settings, "acme", actor="olivia", client=client)
    assert not report.discarded and report.status == "verified"
    tenant = site.reload()
    assert tenant.sender == renamed and tenant.status is TenantStatus.VERIFIED
    assert tenant.failing_since is None


async def test_a_key_issued_during_the_check_discards_the_verdict(verified_site: Site) -> None:
    site, settings = verified_site, load_settings()
    site.store.save_lifecycle("acme", status=TenantStatus.PENDING, failing_since=None, verified_at=None,
                              last_validated_at=None)
    client = RacingClient(settings, lambda: next_key(site))  # a rotation issues a `next` key
    report = await validate_tenant(site.store, settings, "acme", actor="olivia", client=client)
    assert report.discarded == CHANGED_DURING_CHECK
    assert site.reload().status is TenantStatus.PENDING


def test_cli_says_the_result_was_discarded(
    cli: Cli, verified_site: Site, relay_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = Sender("Acme", "billing@acme.test", "acme.test", return_path_label="mail")
    during = [other_process_sets(relay_env, new)]
    monkeypatch.setattr("relay.domains.validation.DnsClient", lambda settings: RacingClient(settings, during[0]))
    result = cli("validate", "acme", "--as", "olivia")
    assert result.code == 1 and result.err == ""
    assert result.out == (
        "acme: result discarded: the sender or the DKIM keys changed while DNS was being checked, so it"
        " judged records that no longer apply; nothing was stored (status pending). Validate again to"
        " check the records as they are now\n")

    back = Sender("Acme", "billing@acme.test", "acme.test", return_path_label="bounce")
    during[0] = other_process_sets(relay_env, back)
    data = json.loads(cli("validate", "acme", "--as", "olivia", "--json").out)
    assert data["discarded"] is True and data["verified"] is False and data["status"] == "pending"
    assert data["why"] == CHANGED_DURING_CHECK

