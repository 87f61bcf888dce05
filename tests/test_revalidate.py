"""The lifecycle against a real NSD: degraded, failed, restored, undecidable checks, promotion, leases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.core import dkimkeys
from relay.core.models import DkimKey, KeyState, TenantStatus
from relay.core.settings import Settings, load_settings
from relay.core.store import Store, utcnow
from relay.domains import revalidation
from relay.domains.dnscheck import DnsClient, Finding, Question
from relay.domains.revalidation import revalidate
from relay.domains.validation import LEASE_LOST, LEASED, lease_name, validate_tenant
from tests.factories import make_tenant
from tests.nsd import zone_text
from tests.snapshot import open_store
from tests.test_validate import (
    Cli,
    Site,
    check,
    make_site,
    silent_server,
    txt,
    validate,
)

__all__ = ["make_site", "silent_server"]  # fixtures, imported for pytest

MakeSite = Callable[..., Site]


def zone(site: Site, *lines: str, serial: int) -> dict[str, str]:
    return {"acme.test": zone_text("acme.test", "\n".join(lines), serial=serial)}


def audit_details(store: Store, action: str = "status.change") -> list[str]:
    return [e.detail for e in store.list_audit("acme") if e.action == action]


def backdate_failure(site: Site, hours: float) -> None:
    """Move the first failure into the past, as if the tenant had been degraded that long."""
    t = site.reload()
    assert t.failing_since is not None
    site.store.save_lifecycle("acme", status=t.status, failing_since=t.failing_since - timedelta(hours=hours),
                              verified_at=t.verified_at, last_validated_at=t.last_validated_at)


def next_key(site: Site) -> DkimKey:
    """A key in state `next`, as a rotation issues it (admin.tenants.issue_key)."""
    now = utcnow()
    private = dkimkeys.generate_private_key()
    selector = dkimkeys.new_selector(now)
    relative = dkimkeys.key_path("acme", selector)
    dkimkeys.write_private_key(Path(load_settings().keys_dir), relative, private)
    key = DkimKey("acme", selector, KeyState.NEXT, dkimkeys.public_key_b64(private), relative,
                  now + timedelta(seconds=1))
    site.store.add_key(key)
    return key


def dkim_line(key: DkimKey) -> str:
    return f"{key.selector}._domainkey IN TXT {txt(f'v=DKIM1; k=rsa; p={key.public_key_b64}', 200)}"


# --- removed -> degraded -> failed -> restored ---------------------------------------------------


def test_removed_record_degrades_then_fails_after_grace_then_recovers(cli: Cli, make_site: MakeSite) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    nsd = site.serve(f"{site.dkim()}\n{site.cname}")
    assert validate(cli)[0] == 0
    nsd.update(zone(site, site.cname, serial=2))  # IT removed the DKIM record

    generation = site.store.generation()
    result = cli("validate", "acme", "--as", "olivia")
    assert site.store.generation() > generation, "a status change reaches the running relay"
    degraded = site.reload()
    assert result.code == 1 and degraded.status is TenantStatus.DEGRADED
    assert degraded.failing_since is not None and degraded.failing_since == degraded.last_validated_at
    until = degraded.failing_since + timedelta(hours=72)
    name = f"{site.dkim_host}.acme.test"
    assert result.out.splitlines()[0] == (
        f"acme: degraded: dkim TXT {name} missing. Mail still leaves as billing@acme.test until "
        f"{until:%Y-%m-%d %H:%M} UTC (RELAY_GRACE, 3 days, after the first failure at "
        f"{degraded.failing_since:%Y-%m-%d %H:%M} UTC), then as the platform sender: fix the records "
        "marked below, then validate again")
    assert result.out.splitlines()[1] == "status: verified -> degraded"

    code, report = validate(cli)  # still failing, grace not over: nothing changes
    assert (code, report["verified"], report["status"], report["changed"]) == (1, False, "degraded", False)
    assert report["failing_since"] == degraded.failing_since.isoformat()
    assert report["failed_after"] == until.isoformat()
    assert site.reload().failing_since == degraded.failing_since

    backdate_failure(site, 72)
    code, report = validate(cli)
    assert (code, report["status"], report["status_before"], report["changed"]) == (1, "failed", "degraded", True)
    assert site.reload().status is TenantStatus.FAILED

    nsd.update(zone(site, site.dkim(), site.cname, serial=3))  # restored
    code, report = validate(cli)
    restored = site.reload()
    assert (code, report["verified"], report["status"]) == (0, True, "verified")
    assert restored.status is TenantStatus.VERIFIED and restored.failing_since is None
    assert audit_details(site.store) == [
        f"verified -> degraded: dkim TXT {name} missing",
        f"degraded -> failed: dkim TXT {name} missing",
        "failed -> verified: every required record is published correctly",
    ]


def test_grace_zero_goes_straight_to_failed(cli: Cli, make_site: MakeSite, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    site.serve(site.dkim())  # the return-path CNAME is gone
    monkeypatch.setenv("RELAY_GRACE", "0s")
    result = cli("validate", "acme", "--as", "olivia")
    assert result.code == 1
    assert result.out.startswith("acme: failed: a required record has failed since ")
    assert "(return-path CNAME bounce.acme.test missing), longer than RELAY_GRACE" in result.out
    assert site.reload().status is TenantStatus.FAILED


def test_pending_stays_pending_while_records_are_missing(cli: Cli, make_site: MakeSite) -> None:
    site = make_site()
    site.serve(site.cname)
    code, report = validate(cli)
    assert (code, report["status"], report["changed"]) == (1, "pending", False)
    assert site.reload().failing_since is None and audit_details(site.store) == []


# --- a check that could not be made changes nothing -------------------------------------------


@pytest.mark.parametrize("status", [TenantStatus.VERIFIED, TenantStatus.DEGRADED, TenantStatus.FAILED])
def test_servfail_changes_nothing(cli: Cli, make_site: MakeSite, status: TenantStatus) -> None:
    site = make_site(status=status)
    since = utcnow() - timedelta(hours=100) if status is not TenantStatus.VERIFIED else None
    site.store.save_lifecycle("acme", status=status, failing_since=since, verified_at=None,
                              last_validated_at=None)
    # A CNAME beside other data: NSD refuses the zone and answers SERVFAIL.
    site.serve(f"{site.cname}\nbounce IN TXT \"v=spf1 -all\"")
    code, report = validate(cli)
    assert report["outcome"] == "could not check" and report["status"] == status.value
    assert report["changed"] is False and code == (0 if status is TenantStatus.VERIFIED else 1)
    after = site.reload()
    assert (after.status, after.failing_since) == (status, since)
    assert audit_details(site.store) == []


def test_timeout_while_degraded_changes_nothing(
    cli: Cli, make_site: MakeSite, silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    since = utcnow() - timedelta(hours=80)  # past the grace: a definitive failure would make it failed
    site.store.save_lifecycle("acme", status=TenantStatus.DEGRADED, failing_since=since, verified_at=None,
                              last_validated_at=None)
    monkeypatch.setenv("RELAY_NAMESERVERS", f"127.0.0.1:{silent_server}")
    monkeypatch.setenv("RELAY_DNS_TIMEOUT", "0.3")
    code, report = validate(cli)
    assert code == 1 and report["outcome"] == "could not check" and report["status"] == "degraded"
    after = site.reload()
    assert (after.status, after.failing_since) == (TenantStatus.DEGRADED, since)


# --- key promotion --------------------------------------------------------------------------------


def test_next_key_seen_published_is_promoted(cli: Cli, make_site: MakeSite) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    new = next_key(site)
    site.serve(f"{site.dkim()}\n{dkim_line(new)}\n{site.cname}")
    generation = site.store.generation()
    result = cli("validate", "acme", "--as", "olivia", "--json")
    report = json.loads(result.out)
    assert result.code == 0 and report["status"] == "verified"
    keys = {k.selector: k for k in site.store.list_keys("acme")}
    assert keys[new.selector].state is KeyState.ACTIVE
    old = keys[site.key.selector]
    checked = site.reload().last_validated_at
    assert checked is not None and old.state is KeyState.RETIRING
    assert old.remove_after == checked + timedelta(days=7)
    assert report["promoted"] == {"active": new.selector, "retiring": site.key.selector,
                                  "remove_after": old.remove_after.isoformat()}
    assert site.store.generation() > generation, "the relay picks the new key up"
    [promote] = audit_details(site.store, "key.promote")
    assert promote.startswith(f"{new.selector} active (seen published); {site.key.selector} retiring until ")


def test_next_key_missing_does_not_degrade(cli: Cli, make_site: MakeSite) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    new = next_key(site)
    site.serve(f"{site.dkim()}\n{site.cname}")
    code, report = validate(cli)
    assert (code, report["status"], report["promoted"]) == (0, "verified", None)
    assert check_named(report, f"{new.selector}._domainkey.acme.test")["status"] == "missing"
    assert {k.selector: k.state for k in site.store.list_keys("acme")} == {
        site.key.selector: KeyState.ACTIVE, new.selector: KeyState.NEXT}


def check_named(report: dict[str, Any], name: str) -> dict[str, Any]:
    [one] = [c for c in report["checks"] if c["name"] == name]
    assert isinstance(one, dict)
    return one


def test_validate_text_names_the_promotion(cli: Cli, make_site: MakeSite) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    new = next_key(site)
    site.serve(f"{dkim_line(new)}\n{site.cname}")  # IT already replaced the old record: still fine
    result = cli("validate", "acme", "--as", "olivia")
    assert result.code == 0 and result.out.startswith("acme: verified: every required record")
    assert f"key: {new.selector} was seen published and signs from now on; {site.key.selector} is " \
           "retiring: keep its record published until " in result.out


# --- one check per tenant at a time: the lease ----------------------------------------------------


class GatedClient(DnsClient):
    """Counts the checks it runs and holds each one until `gate` opens."""

    def __init__(self, settings: Settings, gate: asyncio.Event, entered: asyncio.Event) -> None:
        super().__init__(settings)
        self.gate, self.entered, self.calls = gate, entered, 0

    async def ask_all(self, questions: Iterable[Question]) -> dict[Question, Finding]:
        self.calls += 1
        self.entered.set()
        await self.gate.wait()
        return await super().ask_all(questions)


async def test_two_processes_never_check_one_tenant_at_once(make_site: MakeSite, relay_env: Path) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    site.serve(f"{site.dkim()}\n{site.cname}")
    settings = load_settings()
    first, second = open_store(relay_env), open_store(relay_env)  # two connections, as two processes have
    gate, entered = asyncio.Event(), asyncio.Event()
    one, two = GatedClient(settings, gate, entered), GatedClient(settings, gate, asyncio.Event())
    running = asyncio.create_task(revalidate(first, settings, all_tenants=True, holder="host:1:a", client=one))
    await entered.wait()  # the first is asking DNS, holding the lease
    [skipped] = await revalidate(second, settings, all_tenants=True, holder="host:2:b", client=two)
    gate.set()
    [checked] = await running
    assert skipped.skipped == LEASED and skipped.checks == () and not checked.skipped
    assert (one.calls, two.calls) == (1, 0)
    assert [e.action for e in site.store.list_audit("acme")] == ["revalidate"]
    [again] = await revalidate(second, settings, tenant_ids=["acme"], holder="host:2:b", client=two)
    assert not again.skipped and two.calls == 1, "the lease is released after the check"
    first.close()
    second.close()


async def test_a_crashed_holders_lease_expires(make_site: MakeSite) -> None:
    site = make_site()
    site.serve(f"{site.dkim()}\n{site.cname}")
    now = utcnow()
    assert site.store.acquire_lease(lease_name("acme"), "crashed:1:x", now - timedelta(seconds=1),
                                    now - timedelta(minutes=1))
    report = await validate_tenant(site.store, load_settings(), "acme", holder="host:2:b")
    assert report.status == "verified" and not report.skipped


async def test_a_check_that_outlasts_its_lease_is_discarded(make_site: MakeSite) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    site.serve(site.cname)  # would degrade
    settings = load_settings()

    class TakenOver(DnsClient):
        async def ask_all(self, questions: Iterable[Question]) -> dict[Question, Finding]:
            later = utcnow() + timedelta(hours=1)  # our lease has expired; another process takes it
            assert site.store.acquire_lease(lease_name("acme"), "host:9:z", later + timedelta(minutes=1), later)
            return await super().ask_all(questions)

    report = await validate_tenant(site.store, settings, "acme", holder="host:1:a", client=TakenOver(settings))
    assert report.discarded == LEASE_LOST and report.status == "verified"
    assert site.reload().status is TenantStatus.VERIFIED


def test_validate_says_when_another_process_is_checking(cli: Cli, make_site: MakeSite) -> None:
    site = make_site()
    now = utcnow()
    assert site.store.acquire_lease(lease_name("acme"), "relay:7:q", now + timedelta(minutes=1), now)
    result = cli("validate", "acme", "--as", "olivia")
    assert result.code == 1 and result.out == (
        "acme: not checked: another process is checking it right now; see "
        "`relay-admin tenant show acme` shortly\n")
    assert site.store.list_audit("acme") == [] and site.reload().last_validated_at is None


# --- the revalidate command -----------------------------------------------------------------------


def test_revalidate_all_prints_one_line_per_tenant(cli: Cli, make_site: MakeSite) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    site.serve(site.cname)
    now = utcnow()
    make_tenant(site.store, load_settings(), "beta", domain="beta.test")
    assert site.store.acquire_lease(lease_name("beta"), "relay:7:q", now + timedelta(minutes=1), now)
    result = cli("revalidate", "--all", "--as", "olivia")
    assert result.code == 1
    since = site.reload().failing_since
    assert since is not None
    failed_after = since + timedelta(hours=72)
    assert result.out.splitlines() == [
        f"acme: verified -> degraded (dkim TXT {site.dkim_host}.acme.test missing); "
        f"failed after {failed_after.isoformat()}",
        "beta: skipped: another process is checking it right now",
    ]
    result = cli("revalidate", "acme", "--as", "olivia", "--json")
    [report] = json.loads(result.out)
    assert result.code == 1 and report["tenant"] == "acme" and report["status"] == "degraded"
    assert set(report) >= {"tenant", "verified", "checks", "status", "changed", "discarded", "skipped"}


def test_revalidate_of_verified_tenants_exits_0(cli: Cli, make_site: MakeSite) -> None:
    site = make_site()
    site.serve(f"{site.dkim()}\n{site.cname}")
    result = cli("revalidate", "acme", "--as", "olivia")
    assert (result.code, result.out) == (0, "acme: pending -> verified\n")
    assert check(json.loads(cli("validate", "acme", "--as", "olivia", "--json").out), "dkim")["status"] == "ok"


def test_revalidate_usage_and_roles(cli: Cli, make_site: MakeSite) -> None:
    site = make_site()
    assert cli("revalidate", "--as", "olivia").code == 2
    assert cli("revalidate", "acme", "--all", "--as", "olivia").code == 2
    unknown = cli("revalidate", "nobody", "--as", "olivia")
    assert unknown.code == 2 and "no tenant 'nobody'" in unknown.err
    denied = cli("revalidate", "--all", "--as", "alex")
    assert denied.code == 3 and "permission denied for alex (accountant)" in denied.err
    [entry] = site.store.list_audit()
    assert (entry.actor, entry.action, entry.outcome) == ("alex", "revalidate", "denied")


def test_due_tenants(make_site: MakeSite) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    now = utcnow()
    hour = timedelta(hours=1)
    assert revalidation.due_tenant_ids(site.store, now, hour) == ["acme"]
    site.store.save_lifecycle("acme", status=TenantStatus.VERIFIED, failing_since=None, verified_at=now,
                              last_validated_at=now)
    assert revalidation.due_tenant_ids(site.store, now + hour - timedelta(seconds=1), hour) == []
    assert revalidation.due_tenant_ids(site.store, now + hour, hour) == ["acme"]


def test_a_validation_that_changes_no_status_leaves_the_relay_alone(cli: Cli, make_site: MakeSite) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    site.serve(f"{site.dkim()}\n{site.cname}")
    generation = site.store.generation()
    assert validate(cli)[0] == 0
    assert site.store.generation() == generation, "checks, timestamps and audit rows are not served"


async def test_a_check_that_never_ends_is_cut_off_and_changes_nothing(
    make_site: MakeSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    monkeypatch.setenv("RELAY_DNS_TIMEOUT", "0.1")
    settings = load_settings()

    class Hanging(DnsClient):
        async def ask_all(self, questions: Iterable[Question]) -> dict[Question, Finding]:
            await asyncio.Event().wait()  # never answers
            raise AssertionError("unreachable")

    report = await validate_tenant(site.store, settings, "acme", client=Hanging(settings))
    assert report.outcome == "could not check" and report.status == "verified"
    assert {c.status.value for c in report.checks} == {"error"}
    assert "no complete answer within 0.4 s" in report.checks[0].diagnosis
    assert site.reload().status is TenantStatus.VERIFIED
    assert site.store.acquire_lease(lease_name("acme"), "other:1:x", utcnow() + timedelta(minutes=1), utcnow())
