"""One key rotation as mail sees it: the old selector signs until a validation sees the new record,
the new one signs right after, and the old key is `retiring` with its `remove_after`.

A relay runs on loopback with a recording upstream; NSD serves the tenant's zone; `rotate-key` and
`validate` are the admin services the CLI runs. Every message upstream received is verified with
dkimpy against the key NSD serves.
"""

from __future__ import annotations

from datetime import timedelta

import dkim

from admin.rotation import rotate_key
from relay.core.models import KeyState, TenantStatus
from relay.core.store import utcnow
from relay.domains.dnscheck import DnsClient
from relay.domains.records import records_for
from relay.domains.validation import validate_tenant
from tests.nsd import zone_text
from tests.relay_harness import eventually, nsd_txt
from tests.test_relay_lifecycle import (  # noqa: F401
    WAIT,
    World,
    dkim_tags,
    relay_with_upstream,
    sent,
    world,
)
from tests.test_validate import txt


def acme_zone(world: World, *, serial: int) -> str:
    """acme.test's zone with every DKIM record `records` lists now (active, next, retiring)."""
    tenant, _ = world.acme
    lines = []
    for record in records_for(tenant.sender, world.store.list_keys("acme"),
                              return_path_target=world.base.return_path_target):
        if record.purpose == "dkim":
            lines.append(f"{record.name}. 300 IN TXT {txt(record.value, 200)}")
        elif record.purpose == "return-path":
            lines.append(f"{record.name}. 300 IN CNAME {record.value}.")
    return zone_text("acme.test", "\n".join(lines), serial=serial)


async def test_a_rotation_switches_selectors_on_the_validation_that_sees_the_new_record(world: World) -> None:
    _, old = world.acme
    settings = world.settings(revalidate_interval=3600.0, key_overlap=2 * 86400.0)
    # Checked just now: the relay's own loop has nothing due for an hour, so it never holds acme's
    # lease while this test validates (a validation meeting the lease is skipped, by design).
    for tenant, _ in (world.acme, world.platform):
        world.store.save_lifecycle(tenant.id, status=TenantStatus.VERIFIED, failing_since=None,
                                   verified_at=tenant.verified_at, last_validated_at=utcnow())
    async with relay_with_upstream(world, settings) as (relay, upstream):
        rotation = rotate_key(world.store, settings.keys_dir, "acme", actor="alice")
        new = rotation.key
        assert new.state is KeyState.NEXT and new.selector != old.selector

        # Not yet published: the relay keeps signing with the old selector, and a validation that
        # does not see the new record changes nothing.
        data = await sent(world, relay, upstream)
        assert dkim_tags(data)["s"] == old.selector
        await validate_tenant(world.store, settings, "acme", client=DnsClient(settings))
        assert {k.selector: k.state for k in world.store.list_keys("acme")} == {
            old.selector: KeyState.ACTIVE, new.selector: KeyState.NEXT}
        data = await sent(world, relay, upstream)
        assert dkim_tags(data)["s"] == old.selector
        assert dkim.verify(data, dnsfunc=nsd_txt(world.nsd.port))

        # IT publishes the new record beside the old one; the next validation switches.
        world.nsd.update({"acme.test": acme_zone(world, serial=2)})
        before = utcnow()
        report = await validate_tenant(world.store, settings, "acme", client=DnsClient(settings))
        assert report.status == TenantStatus.VERIFIED
        states = {k.selector: k for k in world.store.list_keys("acme")}
        assert states[new.selector].state is KeyState.ACTIVE
        assert states[old.selector].state is KeyState.RETIRING
        remove_after = states[old.selector].remove_after
        assert remove_after is not None
        assert before + timedelta(days=2) <= remove_after <= utcnow() + timedelta(days=2)

        await eventually(lambda: relay.directory.current.signer("acme").selector == new.selector, timeout=WAIT)
        data = await sent(world, relay, upstream)
        assert dkim_tags(data)["s"] == new.selector
        assert dkim.verify(data, dnsfunc=nsd_txt(world.nsd.port)), "signed with the new, published key"
    assert [e.action for e in world.store.list_audit("acme") if e.action.startswith("key.")] == [
        "key.rotate", "key.promote"]
