"""The key store failing under the authenticator: a key read as valid goes on working
for KEY_STALE_S, an unknown one is still an error, a write is a 503 that says why,
and key-use times are kept for later rather than raised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from llm_gateway.auth import authenticator as authn
from llm_gateway.auth.authenticator import Authenticator
from llm_gateway.auth.keys import ApiKey, KeyStore, NewKey
from llm_gateway.auth.tokens import JwtVerifier
from llm_gateway.settings import Settings
from llm_gateway.store.database import StoreUnavailable, create_engine, migrate, writing

DOWN = sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))


class FlakyStore(KeyStore):
    """A KeyStore whose reads and writes fail while ``down``."""

    def __init__(self, store: KeyStore) -> None:
        super().__init__(store.engine)
        self.down = False

    async def authenticate(self, token: str) -> ApiKey | None:
        if self.down:
            raise DOWN
        return await super().authenticate(token)

    async def touch(self, key_ids: Any) -> None:
        if self.down:
            raise DOWN
        await super().touch(key_ids)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await migrate(engine)
    yield FlakyStore(KeyStore(engine))
    await engine.dispose()


def _authenticator(store: KeyStore, tmp_path: Path) -> Authenticator:
    return Authenticator(store, JwtVerifier(Settings(data_dir=tmp_path), "s" * 32))


async def test_a_key_read_before_the_outage_works_until_it_is_stale(
    store: FlakyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(authn.time, "monotonic", lambda: clock[0])
    auth = _authenticator(store, tmp_path)
    _, key = await store.create(NewKey(name="k", owner="olga"))
    _, other = await store.create(NewKey(name="k2", owner="pia"))
    assert (await auth.authenticate(key)).user == "olga"
    store.down = True
    clock[0] += authn.KEY_CACHE_TTL_S + 1
    assert (await auth.authenticate(key)).user == "olga"  # from the last reading
    with pytest.raises(sa.exc.OperationalError):  # never read: nothing to fall back on
        await auth.authenticate(other)
    clock[0] += authn.KEY_STALE_S
    with pytest.raises(sa.exc.OperationalError):  # too old to trust
        await auth.authenticate(key)


async def test_key_use_is_kept_for_later_when_the_store_fails(
    store: FlakyStore, tmp_path: Path
) -> None:
    auth = _authenticator(store, tmp_path)
    made, key = await store.create(NewKey(name="k", owner="olga"))
    await auth.authenticate(key)
    store.down = True
    await auth.flush_usage()  # logged, not raised
    assert auth.used == {made.id}
    store.down = False
    await auth.flush_usage()
    assert auth.used == set()
    assert (await store.get(made.id)).last_used_at is not None  # type: ignore[union-attr]


def test_a_refused_write_is_a_503_naming_what_and_why() -> None:
    with pytest.raises(StoreUnavailable) as caught, writing("the key"):
        raise sa.exc.OperationalError("INSERT", {}, Exception("database or disk is full"))
    assert caught.value.status == 503
    assert caught.value.message == (
        "cannot store the key now (database or disk is full); retry later"
    )
