"""The lifecycle's pure decisions: which checks count, key promotion, the status rule, when a check is due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay.core.models import (
    CheckResult,
    CheckStatus,
    DkimKey,
    KeyState,
    Sender,
    Tenant,
    TenantStatus,
)
from relay.domains.lifecycle import (
    counted_checks,
    decide,
    due,
    failed_after,
    keys_after,
    promotion,
    wait_after,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
GRACE = timedelta(hours=72)
SENDER = Sender("Acme", "billing@acme.test", "acme.test")
OK, MISSING, MISMATCH, ERROR = CheckStatus.OK, CheckStatus.MISSING, CheckStatus.MISMATCH, CheckStatus.ERROR


def key(selector: str, state: KeyState, age_days: int = 0) -> DkimKey:
    return DkimKey("acme", selector, state, f"KEY-{selector}", f"acme/{selector}.pem",
                   NOW - timedelta(days=age_days))


def dkim(selector: str, status: CheckStatus) -> CheckResult:
    return CheckResult("dkim", "TXT", f"{selector}._domainkey.acme.test", status, "", (), "", NOW)


def rp(status: CheckStatus) -> CheckResult:
    return CheckResult("return-path", "CNAME", "bounce.acme.test", status, "", (), "", NOW)


def dmarc(status: CheckStatus) -> CheckResult:
    return CheckResult("dmarc", "TXT", "_dmarc.acme.test", status, "", (), "", NOW, required=False)


def tenant(status: TenantStatus, failing_since: datetime | None = None) -> Tenant:
    return Tenant("acme", SENDER, status, NOW - timedelta(days=30), NOW - timedelta(days=30),
                  failing_since=failing_since)


ACTIVE = [key("s1", KeyState.ACTIVE, 10)]


def judged(status: TenantStatus, checks: list[CheckResult], *, failing_since: datetime | None = None,
           keys: list[DkimKey] = ACTIVE, grace: timedelta = GRACE, now: datetime = NOW) -> tuple[
               TenantStatus, datetime | None, bool]:
    counted = counted_checks(checks, keys, "acme.test")
    change = decide(tenant(status, failing_since), counted, now=now, grace=grace)
    return change.status, change.failing_since, change.changed


# --- the status rule ----------------------------------------------------------------------------


@pytest.mark.parametrize("before", list(TenantStatus))
def test_every_required_record_ok_verifies_from_any_status(before: TenantStatus) -> None:
    status, since, changed = judged(before, [dkim("s1", OK), rp(OK), dmarc(CheckStatus.WARNING)],
                                    failing_since=NOW - timedelta(hours=1))
    assert status is TenantStatus.VERIFIED and since is None
    assert changed is (before is not TenantStatus.VERIFIED)


@pytest.mark.parametrize("before", list(TenantStatus))
@pytest.mark.parametrize("checks", [[dkim("s1", ERROR), rp(OK)], [dkim("s1", MISSING), rp(ERROR)],
                                    [dkim("s1", ERROR), rp(ERROR)]], ids=["dkim", "rp-beside-missing", "all"])
def test_an_error_in_a_required_check_changes_nothing(before: TenantStatus, checks: list[CheckResult]) -> None:
    earlier = NOW - timedelta(hours=100)
    assert judged(before, checks, failing_since=earlier) == (before, earlier, False)
    assert judged(before, checks) == (before, None, False)


def test_a_definitive_failure_degrades_a_verified_tenant_from_now() -> None:
    change = decide(tenant(TenantStatus.VERIFIED), counted_checks([dkim("s1", MISSING), rp(OK)], ACTIVE,
                                                                  "acme.test"), now=NOW, grace=GRACE)
    assert (change.status, change.failing_since, change.changed) == (TenantStatus.DEGRADED, NOW, True)
    assert change.reason == "dkim TXT s1._domainkey.acme.test missing"
    assert failed_after(change.failing_since, GRACE) == NOW + GRACE


def test_degraded_keeps_its_first_failure_and_fails_once_grace_has_passed() -> None:
    checks = [dkim("s1", OK), rp(MISMATCH)]
    since = NOW - GRACE + timedelta(seconds=1)
    assert judged(TenantStatus.DEGRADED, checks, failing_since=since) == (TenantStatus.DEGRADED, since, False)
    since = NOW - GRACE
    assert judged(TenantStatus.DEGRADED, checks, failing_since=since) == (TenantStatus.FAILED, since, True)


def test_grace_is_the_one_in_force_at_the_check() -> None:
    since = NOW - timedelta(hours=2)
    checks = [dkim("s1", MISSING), rp(OK)]
    assert judged(TenantStatus.DEGRADED, checks, failing_since=since)[0] is TenantStatus.DEGRADED
    assert judged(TenantStatus.DEGRADED, checks, failing_since=since,
                  grace=timedelta(hours=1))[0] is TenantStatus.FAILED


def test_grace_zero_goes_straight_to_failed() -> None:
    checks = [dkim("s1", MISSING), rp(OK)]
    assert judged(TenantStatus.VERIFIED, checks, grace=timedelta(0)) == (TenantStatus.FAILED, NOW, True)


def test_failed_stays_failed_until_all_ok() -> None:
    since = NOW - timedelta(days=10)
    checks = [dkim("s1", OK), rp(MISSING)]
    assert judged(TenantStatus.FAILED, checks, failing_since=since) == (TenantStatus.FAILED, since, False)
    assert judged(TenantStatus.FAILED, [dkim("s1", OK), rp(OK)], failing_since=since) == (
        TenantStatus.VERIFIED, None, True)


def test_pending_stays_pending_when_records_are_missing() -> None:
    assert judged(TenantStatus.PENDING, [dkim("s1", MISSING), rp(MISSING)]) == (TenantStatus.PENDING, None, False)


def test_dmarc_never_counts() -> None:
    assert judged(TenantStatus.VERIFIED, [dkim("s1", OK), rp(OK), dmarc(ERROR)])[0] is TenantStatus.VERIFIED


def test_without_an_active_key_there_is_nothing_to_verify() -> None:
    change = decide(tenant(TenantStatus.VERIFIED), counted_checks([rp(OK)], [], "acme.test"), now=NOW,
                    grace=GRACE)
    assert change.status is TenantStatus.DEGRADED and change.reason == "no active DKIM key"


# --- keys: next and retiring --------------------------------------------------------------------


def test_a_missing_next_key_never_degrades() -> None:
    keys = [*ACTIVE, key("s2", KeyState.NEXT)]
    for status in (MISSING, MISMATCH, ERROR):
        checks = [dkim("s1", OK), dkim("s2", status), rp(OK)]
        assert promotion(keys, checks, "acme.test") is None
        assert judged(TenantStatus.VERIFIED, checks, keys=keys) == (TenantStatus.VERIFIED, None, False)


def test_a_retiring_key_is_informational() -> None:
    keys = [key("s0", KeyState.RETIRING, 20), *ACTIVE]
    checks = [dkim("s0", MISSING), dkim("s1", OK), rp(OK)]
    assert judged(TenantStatus.VERIFIED, checks, keys=keys) == (TenantStatus.VERIFIED, None, False)


def test_a_next_key_seen_published_is_promoted_and_then_counts() -> None:
    keys = [*ACTIVE, key("s2", KeyState.NEXT)]
    checks = [dkim("s1", MISSING), dkim("s2", OK), rp(OK)]  # IT replaced the old record already
    promoted = promotion(keys, checks, "acme.test")
    assert promoted is not None and promoted.promoted.selector == "s2" and promoted.replaced == ACTIVE[0]
    after = keys_after(keys, promoted)
    assert [(k.selector, k.state) for k in after] == [("s1", KeyState.RETIRING), ("s2", KeyState.ACTIVE)]
    assert [c.name for c in counted_checks(checks, after, "acme.test")] == [
        "bounce.acme.test", "s2._domainkey.acme.test"]
    assert judged(TenantStatus.VERIFIED, checks, keys=after) == (TenantStatus.VERIFIED, None, False)


# --- when a check is due ------------------------------------------------------------------------


def test_verified_degraded_and_failed_are_due_every_interval() -> None:
    hour = timedelta(hours=1)
    for status in (TenantStatus.VERIFIED, TenantStatus.DEGRADED, TenantStatus.FAILED):
        checked = Tenant("acme", SENDER, status, NOW, NOW, last_validated_at=NOW)
        assert not due(checked, NOW + hour - timedelta(seconds=1), hour)
        assert due(checked, NOW + hour, hour)
    never = Tenant("acme", SENDER, TenantStatus.VERIFIED, NOW, NOW)
    assert due(never, NOW, hour)


def test_pending_backs_off_doubling_up_to_the_interval() -> None:
    hour, set_at = timedelta(hours=1), NOW
    waits, checked = [], set_at
    for _ in range(7):
        pending = Tenant("acme", SENDER, TenantStatus.PENDING, set_at, set_at, last_validated_at=checked)
        wait = wait_after(pending, hour)
        assert not due(pending, checked + wait - timedelta(seconds=1), hour) and due(pending, checked + wait, hour)
        waits.append(int(wait.total_seconds() / 60))
        checked += wait
    assert waits == [5, 5, 10, 20, 40, 60, 60]
