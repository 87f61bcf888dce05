"""Key files the relay must not sign with: another key copied over a tenant's file, a symlink anywhere below
RELAY_KEYS_DIR, and a store path that leads outside it. Each fails closed for that tenant only (451 4.3.5)
with one log line naming tenant and selector and no key material; the other tenant keeps sending."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.core import dkimkeys
from relay.core.models import DkimKey, TenantStatus
from relay.core.settings import Settings
from relay.core.store import Store, open_store
from relay.mail.signer import DkimSigner
from relay.policy.directory import Directory, KeyProblem
from tests.factories import make_tenant
from tests.relay_harness import (
    RecordingUpstream,
    add_client,
    make_settings,
    relay_running,
    send,
    smtp_upstream,
)
from tests.snapshot import Stores, database_from, restore_template, run_sql

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: S\r\n\r\nBody.\r\n"


def tenant_message(tenant: str) -> bytes:
    return f"X-Relay-Tenant: {tenant}\r\n".encode() + MESSAGE


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> tuple[Path, str]:
    """Two verified tenants with their keys and one client for both, made once."""
    tmp = tmp_path_factory.mktemp("keyfiles")
    settings = make_settings(tmp, database=backend_stores.template(tmp))
    store = open_store(settings)
    make_tenant(store, settings, "acme", name="Acme", domain="acme.test", status=TenantStatus.VERIFIED)
    make_tenant(store, settings, "beta", name="Beta", domain="beta.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "pair", tenants=("acme", "beta"))
    store.close()
    return tmp, secret


@dataclass
class World:
    tmp: Path
    settings: Settings
    store: Store
    secret: str
    upstream: RecordingUpstream

    def key(self, tenant: str) -> DkimKey:
        [key] = self.store.list_keys(tenant)
        return key

    def key_path(self, tenant: str) -> Path:
        return self.settings.keys_dir / self.key(tenant).key_file

    def outside(self, name: str) -> Path:
        """A place beside, not inside, the keys directory."""
        path = self.tmp / "elsewhere" / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path


# Each test's store starts as a copy of the template (one CREATE DATABASE ... TEMPLATE on PostgreSQL).
database_url = database_from("template", lambda template: template[0])


@pytest.fixture
async def world(template: tuple[Path, str], tmp_path: Path, database_url: str) -> AsyncIterator[World]:
    source, secret = template
    (tmp_path / "w").mkdir()
    restore_template(source, tmp_path / "w", database_url)
    async with RecordingUpstream() as upstream:
        settings = make_settings(tmp_path / "w", database=database_url, upstream=smtp_upstream(upstream.port))
        store = open_store(settings)
        yield World(tmp_path / "w", settings, store, secret, upstream)
        store.close()


def key_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "dkim key unusable" in r.getMessage()]


def assert_no_key_material(world: World, caplog: pytest.LogCaptureFixture) -> None:
    assert "PRIVATE KEY" not in caplog.text
    for tenant in ("acme", "beta"):
        assert world.key(tenant).public_key_b64[40:80] not in caplog.text


async def assert_acme_refused_beta_sends(world: World, caplog: pytest.LogCaptureFixture, reason: str) -> None:
    """acme: 451 4.3.5 and one log line with tenant, selector and `reason`; beta: delivered, signed."""
    async with relay_running(world.settings, world.store) as relay:
        acme = await send(relay, tenant_message("acme"), user="pair", secret=world.secret)
        beta = await send(relay, tenant_message("beta"), user="pair", secret=world.secret)
        again = await send(relay, tenant_message("acme"), user="pair", secret=world.secret)
    assert (acme.code, acme.text.split()[0]) == (451, "4.3.5"), acme
    assert (again.code, again.text.split()[0]) == (451, "4.3.5"), again
    assert beta.code == 250, beta
    assert b"d=beta.test" in world.upstream.only.data
    [line] = key_lines(caplog)  # once, not per message or per reload
    assert f"tenant=acme selector={world.key('acme').selector}" in line and reason in line, line
    assert_no_key_material(world, caplog)


async def test_another_tenants_key_copied_over_the_file_is_refused(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    shutil.copyfile(world.key_path("beta"), world.key_path("acme"))  # content only: still 0600, still ours
    assert world.key_path("acme").stat().st_mode & 0o777 == 0o600
    await assert_acme_refused_beta_sends(world, caplog, "does not match the public key")


async def test_a_key_swapped_while_running_stops_signing_at_the_next_reload(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with relay_running(world.settings, world.store) as relay:
        before = await send(relay, tenant_message("acme"), user="pair", secret=world.secret)
        shutil.copyfile(world.key_path("beta"), world.key_path("acme"))
        await relay.directory.poll()  # what the reload loop does every RELAY_RELOAD_INTERVAL
        after = await send(relay, tenant_message("acme"), user="pair", secret=world.secret)
    assert before.code == 250, before
    assert (after.code, after.text.split()[0]) == (451, "4.3.5"), after
    assert len(world.upstream.messages) == 1
    [line] = key_lines(caplog)
    assert f"tenant=acme selector={world.key('acme').selector}" in line
    assert_no_key_material(world, caplog)


def link_file_to_beta(world: World) -> None:
    """acme's key file becomes a symlink to beta's, inside the keys directory."""
    path = world.key_path("acme")
    path.unlink()
    path.symlink_to(world.key_path("beta"))


def link_file_outside(world: World) -> None:
    """acme's key file becomes a symlink to a copy of acme's own key outside the keys directory."""
    path = world.key_path("acme")
    copy = world.outside("acme.pem")
    shutil.copy2(path, copy)
    path.unlink()
    path.symlink_to(copy)


def link_directory_outside(world: World) -> None:
    """acme's key directory becomes a symlink to a directory outside, holding acme's own key file."""
    directory = world.key_path("acme").parent
    moved = world.outside("acme-keys")
    shutil.move(directory, moved)
    directory.symlink_to(moved, target_is_directory=True)


@pytest.mark.parametrize("plant", [link_file_to_beta, link_file_outside, link_directory_outside],
                         ids=["file-to-other-tenant", "file-outside", "directory-outside"])
async def test_a_key_reached_through_a_symlink_is_refused(
        world: World, caplog: pytest.LogCaptureFixture, plant: Callable[[World], None]) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    plant(world)
    await assert_acme_refused_beta_sends(world, caplog, "symbolic link")


def set_key_file(world: World, key_file: str) -> None:
    run_sql(world.settings.database, "UPDATE dkim_keys SET key_file = ? WHERE tenant = 'acme'", (key_file,))


@pytest.mark.parametrize("form", ["absolute", "dot-dot", "dot"])
async def test_a_store_path_leading_outside_the_keys_directory_is_refused(
        world: World, caplog: pytest.LogCaptureFixture, form: str) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    copy = world.outside("acme.pem")  # acme's own key, 0600, outside: still never read
    shutil.copy2(world.key_path("acme"), copy)
    key_file = {"absolute": str(copy), "dot-dot": "../elsewhere/acme.pem",
                "dot": f"./{world.key('acme').key_file}"}[form]
    set_key_file(world, key_file)
    await assert_acme_refused_beta_sends(world, caplog, "not a plain path inside the keys directory")


@pytest.mark.parametrize("relative", ["", "/etc/passwd", "../x.pem", "acme/../beta/k.pem", "acme//k.pem",
                                      "acme/./k.pem", "acme/k.pem/", "acme/\x00.pem"])
def test_key_file_paths_must_be_plain_relative_paths(relative: str) -> None:
    with pytest.raises(dkimkeys.KeyFileError, match="not a plain path inside the keys directory"):
        dkimkeys.key_file_parts(relative)
    assert dkimkeys.key_file_parts("acme/ar20261127abcdef.pem") == ["acme", "ar20261127abcdef.pem"]


def test_the_directory_refuses_a_mismatched_key_and_takes_the_right_one_back(world: World) -> None:
    """No socket: the snapshot holds a KeyProblem while the wrong key is there, a signer once it is back."""
    directory = Directory(world.store, keys_dir=world.settings.keys_dir, reload_interval=60)
    path, saved = world.key_path("acme"), world.key_path("acme").read_bytes()
    shutil.copyfile(world.key_path("beta"), path)
    problem = directory.load().signers["acme"]
    assert isinstance(problem, KeyProblem) and "does not match" in problem.reason
    assert isinstance(directory.current.signers["beta"], DkimSigner)
    path.write_bytes(saved)
    assert isinstance(directory.load().signers["acme"], DkimSigner)
