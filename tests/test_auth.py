"""Passwords and API tokens (`admin.auth`): salted slow hashes, tokens found by prefix, equal effort on a miss.

Also the store's side of it: users with their scope and password hash, tokens, migration 3, and
that none of these writes moves the generation the relay polls.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from admin import auth
from admin.auth import (
    PASSWORD_MIN_LENGTH,
    authenticate_password,
    hash_password,
    issue_token,
    password_problem,
    token_prefix,
    user_for_token,
    verify_password,
)
from relay.core.models import ApiToken, Role, Sender, Tenant, TenantStatus, User
from relay.core.store import SqliteStore, Store, StoreError, utcnow
from relay.core.store import sqlite as store_module
from tests.snapshot import dump_url, open_url

PASSWORD = "correct horse battery staple"
TOKEN_SHAPE = re.compile(r"rat_[a-z0-9]{8}_[A-Za-z0-9-]{43}")  # exactly two '_': it splits in three


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "relay.db"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = open_url(database_url)
    now = utcnow()
    opened.save_tenant(Tenant(id="acme", sender=Sender(name="Acme", email="billing@acme.test",
                                                       domain="acme.test"),
                              status=TenantStatus.PENDING, created_at=now, updated_at=now))
    opened.add_user(User(name="alice", role=Role.OWNER, created_at=now))
    opened.add_user(User(name="carl", role=Role.ACCOUNTANT, created_at=now, tenants=("acme",)))
    yield opened
    opened.close()


def test_a_password_hash_is_salted_scrypt_and_never_the_password() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second, "a fresh salt each time"
    assert PASSWORD not in first
    scheme, n, r, p, salt, digest = first.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert salt and digest
    assert verify_password(first, PASSWORD) and verify_password(second, PASSWORD)
    assert not verify_password(first, PASSWORD + " ")
    assert not verify_password("not a hash", PASSWORD)
    assert not verify_password("", PASSWORD)


def test_a_password_needs_at_least_twelve_characters() -> None:
    assert PASSWORD_MIN_LENGTH == 12
    assert password_problem("x" * 12) is None
    problem = password_problem("x" * 11)
    assert problem is not None and "at least 12" in problem and "11 characters" in problem


def test_authenticate_password(store: Store) -> None:
    assert authenticate_password(store, "carl", PASSWORD) is None, "no password set yet"
    assert store.set_password_hash("carl", hash_password(PASSWORD))
    user = authenticate_password(store, "carl", PASSWORD)
    assert user is not None and (user.name, user.role, user.tenants) == ("carl", Role.ACCOUNTANT, ("acme",))
    assert authenticate_password(store, "carl", "wrong password!") is None
    assert authenticate_password(store, "nobody", PASSWORD) is None
    assert not store.set_password_hash("nobody", hash_password(PASSWORD))


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = auth.verify_password

    def counted(stored: str, password: str) -> bool:
        calls.append(stored)
        return real(stored, password)

    monkeypatch.setattr(auth, "verify_password", counted)
    return calls


def test_a_miss_costs_one_scrypt_like_a_hit(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal work whether the name (or token prefix) exists: timing does not tell which part was wrong."""
    store.set_password_hash("carl", hash_password(PASSWORD))
    token = issue_token(store, "carl", utcnow())
    calls = _counting(monkeypatch)
    for name, password in (("carl", "wrong password!"), ("nobody", PASSWORD), ("alice", PASSWORD)):
        calls.clear()
        assert authenticate_password(store, name, password) is None
        assert len(calls) == 1, name
    for guess in (token[:-1] + ("A" if token[-1] != "A" else "B"), "rat_zzzzzzzz_" + token[13:]):
        calls.clear()
        assert user_for_token(store, guess) is None
        assert len(calls) == 1, guess


def test_a_token_is_printed_once_and_stored_as_prefix_and_hash(store: Store, database_url: str) -> None:
    tokens = [issue_token(store, "carl", utcnow()) for _ in range(20)]
    assert all(TOKEN_SHAPE.fullmatch(token) for token in tokens), tokens
    token = tokens[0]
    prefix = token.split("_")[1]
    [stored] = store.tokens_with_prefix(prefix)
    assert (stored.prefix, stored.user, stored.revoked_at) == (prefix, "carl", None)
    assert verify_password(stored.token_hash, token)
    secret = token.split("_", 2)[2]
    assert secret not in repr(dump_url(database_url)) and token not in repr(dump_url(database_url))
    assert stored.token_hash not in repr(stored), "the hash stays out of logs and reprs"


def test_a_token_acts_as_its_user_with_role_and_scope_until_revoked(store: Store) -> None:
    token = issue_token(store, "carl", utcnow())
    user = user_for_token(store, token)
    assert user is not None and (user.name, user.role, user.tenants, user.scoped) == (
        "carl", Role.ACCOUNTANT, ("acme",), True)
    prefix = token_prefix(token)
    assert prefix is not None and store.revoke_token(prefix, utcnow()) == 1
    assert user_for_token(store, token) is None, "revoked: ends at once"
    assert store.revoke_token(prefix, utcnow()) == 0, "already revoked"


@pytest.mark.parametrize("text", ["", "rat_", "Bearer x", "rat_ABCDEFGH_x", "rat_abcd_x", "abc"])
def test_a_malformed_token_is_nobody(store: Store, text: str) -> None:
    assert user_for_token(store, text) is None


def test_token_prefix_reads_the_prefix_the_whole_token_or_rat_prefix() -> None:
    token = "rat_ab12cd34_" + "x" * 43
    assert token_prefix(token) == token_prefix("rat_ab12cd34") == token_prefix("ab12cd34") == "ab12cd34"
    for bad in ("ab12cd3", "AB12CD34", "ab12cd345", "rat-ab12cd34", ""):
        assert token_prefix(bad) is None, bad


def test_a_token_for_an_unknown_user_is_not_issued(store: Store) -> None:
    with pytest.raises(LookupError):
        issue_token(store, "nobody", utcnow())


def test_users_keep_their_scope_and_password_hash(store: Store) -> None:
    now = utcnow()
    store.add_user(User(name="dana", role=Role.ADMIN, created_at=now, tenants=("acme",),
                        password_hash="scrypt$x"))
    dana = store.get_user("dana")
    assert dana is not None and dana.tenants == ("acme",) and dana.password_hash == "scrypt$x"
    assert "scrypt$x" not in repr(dana)
    alice = store.get_user("alice")
    assert alice is not None and alice.tenants == () and not alice.scoped and alice.password_hash is None
    assert [(u.name, u.tenants) for u in store.list_users()] == [
        ("alice", ()), ("carl", ("acme",)), ("dana", ("acme",))]


def test_a_user_cannot_be_scoped_to_a_tenant_that_does_not_exist(store: Store) -> None:
    with pytest.raises(StoreError):
        store.add_user(User(name="eve", role=Role.ADMIN, created_at=utcnow(), tenants=("nope",)))
    assert store.get_user("eve") is None, "all or nothing"


def test_users_passwords_and_tokens_do_not_move_the_generation(store: Store) -> None:
    before = store.generation()
    store.add_user(User(name="dana", role=Role.ADMIN, created_at=utcnow(), tenants=("acme",)))
    store.set_password_hash("dana", hash_password(PASSWORD))
    token = issue_token(store, "dana", utcnow())
    store.revoke_token(token.split("_")[1], utcnow())
    assert store.generation() == before, "the relay serves none of these"


@pytest.mark.sqlite_only  # SQLite's own migration list, run by hand
def test_migration_3_keeps_existing_users_unscoped(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    for migration in store_module.MIGRATIONS[:2]:
        db.executescript(migration)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO users VALUES ('alice', 'owner', '2026-01-01T00:00:00+00:00')")
    db.commit()
    db.close()
    store = SqliteStore(db_path)
    try:
        alice = store.get_user("alice")
        assert alice is not None and (alice.role, alice.tenants, alice.password_hash) == (Role.OWNER, (), None)
        assert store.tokens_with_prefix("ab12cd34") == []
    finally:
        store.close()


def test_api_token_keeps_its_hash_out_of_repr() -> None:
    token = ApiToken(prefix="ab12cd34", user="carl", token_hash="scrypt$secret", created_at=utcnow())
    assert "scrypt$secret" not in repr(token)
