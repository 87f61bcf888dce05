"""Build store state directly (no CLI), for tests of one part that need tenants, keys and clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.core import dkimkeys
from relay.core.models import (
    Client,
    DkimKey,
    KeyState,
    Role,
    Sender,
    Tenant,
    TenantStatus,
    User,
)
from relay.core.settings import Settings, load_settings
from relay.core.store import Store, open_store, utcnow

ACCOUNTANT = "carol"


@pytest.fixture
def settings(relay_env: Path) -> Settings:
    """The settings of the `relay_env` directory (import this fixture into a test module to use it)."""
    return load_settings()


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    """The store the `cli` fixture uses, with the accountant `ACCOUNTANT`: for tests that run the CLI
    as that role (import this fixture, with `settings`, into a test module to use it)."""
    opened = open_store(settings)
    opened.add_user(User(ACCOUNTANT, Role.ACCOUNTANT, utcnow()))
    yield opened
    opened.close()


def make_tenant(
    store: Store,
    settings: Settings,
    tenant_id: str,
    *,
    name: str = "Acme Accounting",
    email: str | None = None,
    domain: str | None = None,
    return_path_label: str = "bounce",
    status: TenantStatus = TenantStatus.PENDING,
    selector: str | None = None,
) -> tuple[Tenant, DkimKey]:
    """A tenant with an active RSA-2048 key written under the keys dir (0600)."""
    domain = domain or f"{tenant_id}.test"
    now = utcnow()
    tenant = Tenant(
        id=tenant_id,
        sender=Sender(name=name, email=email or f"billing@{domain}", domain=domain,
                      return_path_label=return_path_label),
        status=status,
        created_at=now,
        updated_at=now,
        verified_at=now if status is TenantStatus.VERIFIED else None,
    )
    private = dkimkeys.generate_private_key()
    selector = selector or dkimkeys.new_selector(now)
    relative = dkimkeys.key_path(tenant_id, selector)
    dkimkeys.write_private_key(Path(settings.keys_dir), relative, private)
    key = DkimKey(tenant=tenant_id, selector=selector, state=KeyState.ACTIVE,
                  public_key_b64=dkimkeys.public_key_b64(private), key_file=relative, created_at=now)
    with store.transaction():
        store.save_tenant(tenant)
        store.add_key(key)
    return tenant, key


def make_client(
    store: Store,
    name: str,
    secret_hash: str,
    *,
    tenants: tuple[str, ...] = (),
    all_tenants: bool = False,
    networks: tuple[str, ...] = (),
) -> Client:
    client = Client(name=name, secret_hash=secret_hash, all_tenants=all_tenants, tenants=tenants,
                    networks=networks, created_at=utcnow())
    store.add_client(client)
    return client


def populate(store: Store, keys_dir: Path, count: int, key: rsa.RSAPrivateKey) -> list[str]:
    """`count` verified tenants t0000..., each with its own active key file (0600, written atomically),
    all holding `key` (generating thousands of RSA keys would be the slow part)."""
    public = dkimkeys.public_key_b64(key)
    now = utcnow()
    ids = [f"t{number:04d}" for number in range(count)]
    with store.transaction():  # one commit: thousands of separate ones would be the slow part on PostgreSQL
        for tid in ids:
            relative = dkimkeys.key_path(tid, f"s{tid}")
            dkimkeys.write_private_key(keys_dir, relative, key)
            store.save_tenant(Tenant(id=tid, sender=Sender(name=tid, email=f"billing@{tid}.test", domain=f"{tid}.test"),
                                     status=TenantStatus.VERIFIED, created_at=now, updated_at=now, verified_at=now))
            store.add_key(DkimKey(tenant=tid, selector=f"s{tid}", state=KeyState.ACTIVE, public_key_b64=public,
                                  key_file=relative, created_at=now))
    return ids
