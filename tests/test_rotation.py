"""`relay-admin rotate-key`: a next key beside the active one, one rotation at a time, roles, audit,
and how records, `tenant show`, `tenant set` and the Excel hand-over show the key states."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from admin.commands.rotate_key import duration_words
from admin.export_texts import LANGUAGES
from admin.rotation import rotate_key
from relay.core import dkimkeys
from relay.core.models import DkimKey, KeyState
from relay.core.store import StoreError, utcnow
from relay.domains.records import in_lifecycle_order
from relay.policy import directory
from tests.conftest import CliResult
from tests.snapshot import (
    Stores,
    assert_one_line_error,
    build_acme_template,
    database_from,
    env_url,
    fail_inserts,
    open_store,
    restore_template,
    state,
)

Cli = Callable[..., CliResult]
OWNER, ADMIN, ACCOUNTANT = "alice", "bob", "carol"
HEADER_ROW = 6  # the Records sheet's header row (admin.export.HEADER_ROW)
PURPOSE_COLUMN = 7


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Path:
    return build_acme_template(tmp_path_factory.mktemp("rotation"), stores=backend_stores)


# Each test's store starts as a copy of the template (one CREATE DATABASE ... TEMPLATE on PostgreSQL).
database_url = database_from("template")


@pytest.fixture
def env(template: Path, relay_env: Path) -> Path:
    """Users alice (owner), bob (admin), carol (accountant); tenant acme with its active key."""
    restore_template(template, relay_env)
    return relay_env


def keys_of(env: Path, tenant: str = "acme") -> list[DkimKey]:
    """The tenant's keys: retiring, active, next (keys made within one second tie on created_at)."""
    store = open_store(env)
    try:
        return in_lifecycle_order(store.list_keys(tenant))
    finally:
        store.close()


def rotate(cli: Cli, tenant: str = "acme", actor: str = OWNER) -> CliResult:
    return cli("rotate-key", tenant, "--as", actor, "--json")


def rotated(cli: Cli, actor: str = OWNER) -> dict[str, Any]:
    result = rotate(cli, actor=actor)
    assert (result.code, result.err) == (0, ""), result.err
    data: dict[str, Any] = json.loads(result.out)
    return data


def records(cli: Cli, *args: str) -> CliResult:
    result = cli("records", "acme", "--as", ACCOUNTANT, *args)
    assert (result.code, result.err) == (0, ""), result.err
    return result


def dkim_records(cli: Cli) -> list[dict[str, Any]]:
    return [r for r in json.loads(records(cli, "--json").out) if r["purpose"] == "dkim"]


def set_keys(env: Path, changes: dict[str, tuple[KeyState, datetime | None]]) -> None:
    """Put keys in a state directly, as a promotion (relay.domains.validation) leaves them."""
    store = open_store(env)
    try:
        for selector, (key_state, remove_after) in changes.items():
            store.set_key_state("acme", selector, key_state, remove_after)
    finally:
        store.close()


# --- rotate-key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("actor", [OWNER, ADMIN])
def test_rotate_key_issues_a_next_key_beside_the_active_one(cli: Cli, env: Path, actor: str) -> None:
    (active,) = keys_of(env)
    start = utcnow()
    data = rotated(cli, actor)
    old, new = keys_of(env)
    assert (old.selector, old.state) == (active.selector, KeyState.ACTIVE)
    assert (new.selector, new.state, new.remove_after) == (data["selector"], KeyState.NEXT, None)
    assert new.selector != old.selector and start <= new.created_at <= utcnow()
    path = env / "keys" / new.key_file
    assert path == env / "keys" / "acme" / f"{new.selector}.pem" and str(path) == data["key_file"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private = dkimkeys.load_private_key(env / "keys", new.key_file, public_key=new.public_key_b64)
    assert private.key_size == 2048  # and its public half is the one stored (or it would not load)
    # The relay keeps signing with the active key: the next one is not seen published yet.
    assert directory.active_key([old, new]) == old
    record = next(r for r in dkim_records(cli) if r["state"] == "next")
    assert data == {
        "tenant": "acme", "selector": new.selector, "state": "next", "record": record,
        "active_selector": old.selector, "key_file": str(path), "key_overlap_seconds": 7 * 86400.0,
    }
    assert record["name"] == f"{new.selector}._domainkey.acme.test" and record["required"] is True
    assert record["value"] == f"v=DKIM1; k=rsa; p={new.public_key_b64}"
    store = open_store(env)
    try:
        entry = store.list_audit("acme")[-1]
    finally:
        store.close()
    assert (entry.actor, entry.action, entry.outcome) == (actor, "key.rotate", "done")
    assert new.selector in entry.detail and old.selector in entry.detail


def test_text_output_names_the_record_and_the_next_step(cli: Cli, env: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_KEY_OVERLAP", "36h")
    (active,) = keys_of(env)
    result = cli("rotate-key", "acme", "--as", OWNER)
    assert (result.code, result.err) == (0, "")
    new = keys_of(env)[-1]
    lines = result.out.splitlines()
    assert lines[0] == (f"tenant acme: new DKIM key, selector {new.selector}, state next; "
                        f"{active.selector} (active) keeps signing")
    assert f"  host:  {new.selector}._domainkey" in lines
    assert f"  name:  {new.selector}._domainkey.acme.test" in lines
    assert f"  value: v=DKIM1; k=rsa; p={new.public_key_b64}" in lines
    assert lines[-1].startswith("next: publish it, then `relay-admin validate acme`: the relay "
                                "switches to it on the validation that sees it")
    assert f"the old key {active.selector} stays published until 36 hours after that switch" in lines[-1]


def test_a_second_rotation_while_next_is_unpublished_is_refused(cli: Cli, env: Path) -> None:
    first = rotated(cli)["selector"]
    before = state(env)
    result = cli("rotate-key", "acme", "--as", OWNER)
    assert_one_line_error(result, 2, f"publish {first}._domainkey.acme.test first and run "
                                     "`relay-admin validate acme`")
    assert state(env) == before  # no new key file, no row, no audit entry


def test_after_the_switch_another_rotation_is_allowed(cli: Cli, env: Path) -> None:
    old, = keys_of(env)
    new = rotated(cli)["selector"]
    set_keys(env, {new: (KeyState.ACTIVE, None), old.selector: (KeyState.RETIRING, utcnow())})
    third = rotated(cli)
    assert third["active_selector"] == new
    assert [k.state for k in keys_of(env)] == [KeyState.RETIRING, KeyState.ACTIVE, KeyState.NEXT]


def test_accountant_is_denied_and_audited(cli: Cli, env: Path) -> None:
    before = state(env)
    result = rotate(cli, actor=ACCOUNTANT)
    assert_one_line_error(result, 3, "only owners and admins can rotate a tenant's DKIM key")
    assert state(env).without_audit() == before.without_audit()
    store = open_store(env)
    try:
        entry = store.list_audit("acme")[-1]
    finally:
        store.close()
    assert (entry.actor, entry.action, entry.outcome) == (ACCOUNTANT, "key.rotate", "denied")


@pytest.mark.parametrize("tenant", ["nobody", "Bad Id"])
def test_unknown_or_bad_tenant_is_exit_2(cli: Cli, env: Path, tenant: str) -> None:
    before = state(env)
    assert_one_line_error(rotate(cli, tenant), 2, "TENANT")
    assert state(env) == before


def test_a_tenant_without_an_active_key_is_refused(cli: Cli, env: Path) -> None:
    (active,) = keys_of(env)
    set_keys(env, {active.selector: (KeyState.RETIRING, utcnow())})
    before = state(env)
    assert_one_line_error(rotate(cli), 2, "acme has no active DKIM key to rotate")
    assert state(env) == before


def test_failed_store_write_leaves_no_key_file(env: Path) -> None:
    fail_inserts(env_url(), "audit")
    before = state(env)
    store = open_store(env)
    try:
        with pytest.raises(StoreError, match="injected failure"):
            rotate_key(store, env / "keys", "acme", actor=OWNER)
    finally:
        store.close()
    assert state(env) == before


def test_unwritable_keys_directory_is_exit_4_and_changes_nothing(cli: Cli, env: Path) -> None:
    not_a_dir = env / "keys-file"
    not_a_dir.write_text("")  # a file where RELAY_KEYS_DIR should be: unwritable, even for root
    before = state(env)
    result = cli("rotate-key", "acme", "--as", OWNER, "--keys-dir", str(not_a_dir))
    assert_one_line_error(result, 4, str(not_a_dir))
    assert state(env) == before and not_a_dir.read_text() == ""


@pytest.mark.parametrize(("seconds", "words"), [
    (7 * 86400, "7 days"), (86400, "1 day"), (36 * 3600, "36 hours"), (90 * 60, "90 minutes"),
    (61, "61 seconds"), (1, "1 second"), (0, "0 seconds"),
])
def test_duration_words(seconds: float, words: str) -> None:
    assert duration_words(seconds) == words


# --- tenant set follows the rotation's states ---------------------------------------------------


def test_tenant_set_retires_active_for_the_overlap_and_next_at_once(
    cli: Cli, env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_KEY_OVERLAP", "2d")
    (active,) = keys_of(env)
    waiting = rotated(cli)["selector"]
    result = cli("tenant", "set", "acme", "--name", "Acme", "--email", "post@acme.test",
                 "--domain", "acme.test", "--as", OWNER)
    assert result.code == 0, result.err
    keys = {key.selector: key for key in keys_of(env)}
    old, was_next = keys.pop(active.selector), keys.pop(waiting)
    (new,) = keys.values()
    assert new.state is KeyState.ACTIVE and new.created_at >= old.created_at
    assert old.state is KeyState.RETIRING
    assert old.remove_after == new.created_at + timedelta(days=2)  # RELAY_KEY_OVERLAP, not 7d
    # The next key never signed anything: nothing to wait for before its record may go.
    assert (was_next.state, was_next.remove_after) == (KeyState.RETIRING, new.created_at)
    assert all((env / "keys" / k.key_file).is_file() for k in (old, was_next, new))


# --- how the states are shown -------------------------------------------------------------------


def test_records_show_both_keys_during_a_rotation(cli: Cli, env: Path) -> None:
    (active,) = keys_of(env)
    new = rotated(cli)["selector"]
    dkim = dkim_records(cli)
    assert [(r["name"].split(".")[0], r["state"]) for r in dkim] == [
        (active.selector, "active"), (new, "next")]
    assert "note" not in dkim[0] and "published" in dkim[1]["note"]
    bind = " ".join(records(cli, "--format", "bind").out.split("\n; "))  # comments unwrapped
    assert f"DKIM public key (selector {new}): next: publish now, the relay switches to it once " \
           "validated. Required." in bind
    table = records(cli).out
    assert "dkim (next)" in table and f"{new}._domainkey.acme.test (next): publish this record" in table


def test_retiring_key_shows_remove_after_and_later_safe_to_remove(cli: Cli, env: Path) -> None:
    (active,) = keys_of(env)
    new = rotated(cli)["selector"]
    until = (utcnow() + timedelta(days=7)).replace(second=0)
    set_keys(env, {new: (KeyState.ACTIVE, None), active.selector: (KeyState.RETIRING, until)})
    old = dkim_records(cli)[0]
    assert (old["state"], old["remove_after"], old["required"]) == ("retiring", until.isoformat(), False)
    when = until.strftime("%Y-%m-%d %H:%M UTC")
    assert old["note"].endswith(f"keep it published until {when}, then remove it")
    assert f"retiring: keep until {when}, then remove. Optional." in \
        " ".join(records(cli, "--format", "bind").out.split("\n; "))
    past = until - timedelta(days=8)
    set_keys(env, {active.selector: (KeyState.RETIRING, past)})
    old = dkim_records(cli)[0]
    since = past.strftime("%Y-%m-%d %H:%M UTC")
    assert old["note"].startswith(f"safe to remove since {since}")
    assert keys_of(env)[0].selector == active.selector  # listed, never deleted by us


def test_tenant_show_lists_every_key(cli: Cli, env: Path) -> None:
    (active,) = keys_of(env)
    new = rotated(cli)["selector"]
    until = datetime(2099, 1, 8, 12, 0, tzinfo=UTC)
    set_keys(env, {active.selector: (KeyState.RETIRING, until), new: (KeyState.ACTIVE, None)})
    third = rotated(cli)["selector"]
    result = cli("tenant", "show", "acme", "--as", ACCOUNTANT, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["selector"] == new
    keys = data["keys"]
    assert [(k["selector"], k["state"], k["remove_after"]) for k in keys] == [
        (active.selector, "retiring", until.isoformat()), (new, "active", None), (third, "next", None)]
    assert all(set(k) == {"selector", "state", "name", "created_at", "remove_after", "note"} for k in keys)
    assert keys[0]["name"] == f"{active.selector}._domainkey.acme.test"
    assert keys[1]["note"] == "" and "2099-01-08 12:00 UTC" in keys[0]["note"]
    text = cli("tenant", "show", "acme", "--as", ACCOUNTANT).out.splitlines()
    start = text.index("keys:")
    lines = [line.split() for line in text[start + 1:] if line.startswith("  ") and
             not line.startswith("    ")][:3]
    assert [line[:2] for line in lines] == [[active.selector, "retiring"], [new, "active"],
                                           [third, "next"]]
    assert " ".join(lines[0][-4:]) == "after 2099-01-08 12:00 UTC"


@pytest.mark.parametrize("lang", ["nl", "en", "fr"])
def test_export_shows_each_keys_state_and_remove_after(cli: Cli, env: Path, tmp_path: Path,
                                                       lang: str) -> None:
    (active,) = keys_of(env)
    new = rotated(cli)["selector"]
    until = datetime(2099, 1, 8, 12, 0, tzinfo=UTC)
    past = datetime(2020, 1, 1, 9, 30, tzinfo=UTC)
    set_keys(env, {active.selector: (KeyState.RETIRING, until), new: (KeyState.ACTIVE, None)})
    store = open_store(env)
    try:
        old = in_lifecycle_order(store.list_keys("acme"))[0]
        store.add_key(replace(old, selector="ar2019gone", key_file="acme/ar2019gone.pem",
                              created_at=old.created_at - timedelta(days=1), remove_after=past))
    finally:
        store.close()
    third = rotated(cli)["selector"]
    output = tmp_path / f"acme-{lang}.xlsx"
    result = cli("export", "acme", "--output", str(output), "--lang", lang, "--as", ACCOUNTANT)
    assert result.code == 0, result.err
    texts = LANGUAGES[lang]
    wb = openpyxl.load_workbook(output)
    ws = wb[texts.records_sheet]
    rows = {str(ws.cell(r, 2).value).split(".")[0]: str(ws.cell(r, PURPOSE_COLUMN).value)
            for r in range(HEADER_ROW + 1, ws.max_row + 1)}
    dkim, states = texts.purposes["dkim"], texts.states
    assert rows["ar2019gone"] == f"{dkim} ({states['retiring']}: " \
        f"{texts.key_removable_since.format(until='2020-01-01 09:30 UTC')})"
    assert rows[active.selector] == f"{dkim} ({states['retiring']}: " \
        f"{texts.key_keep_until.format(until='2099-01-08 12:00 UTC')})"
    assert rows[new] == f"{dkim} ({states['active']})"
    assert rows[third] == f"{dkim} ({states['next']}: {texts.key_publish_now})"
    paragraphs = [str(c.value) for c in wb[texts.instructions_sheet]["A"] if c.value is not None]
    assert texts.rotation_heading in paragraphs
    assert texts.rotation.format(purpose_header=texts.headers[6],
                                 records_sheet=texts.records_sheet) in paragraphs
    assert any(p.startswith(f"{active.selector}._domainkey") and "2099-01-08 12:00 UTC" in p
               for p in paragraphs)
    assert any(p.startswith("ar2019gone._domainkey") and "2020-01-01 09:30 UTC" in p for p in paragraphs)


def test_export_without_a_key_change_has_no_rotation_section(cli: Cli, env: Path, tmp_path: Path) -> None:
    output = tmp_path / "acme.xlsx"
    assert cli("export", "acme", "--output", str(output), "--as", ACCOUNTANT).code == 0
    texts = LANGUAGES["nl"]
    paragraphs = [c.value for c in openpyxl.load_workbook(output)[texts.instructions_sheet]["A"]]
    assert texts.rotation_heading not in paragraphs
