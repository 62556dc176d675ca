"""Authentication and key management end to end in process (SQLite store, dummy models)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from llm_gateway import Settings, create_app
from llm_gateway.auth.authenticator import KEY_CACHE_TTL_S
from llm_gateway.auth.tokens import mint_token
from tests.conftest import ADMIN_KEY

CHAT = {"model": "dummy", "messages": [{"role": "user", "content": "hi there"}]}
SECRET = "test-jwt-secret-of-sufficient-length-0123456789"


@pytest.fixture
def rsa_key(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "public.pem"
    path.write_bytes(pem)
    return private, path


@pytest.fixture
def app_client(
    tmp_path: Path, rsa_key: tuple[rsa.RSAPrivateKey, Path], database_url: str | None
) -> Iterator[TestClient]:
    """The app on SQLite and on the real PostgreSQL: every test here runs on both."""
    settings = Settings(
        engine_dummy=True,
        data_dir=tmp_path,
        admin_key=ADMIN_KEY,
        jwt_secret=SECRET,
        jwt_public_key_file=rsa_key[1],
        database_url=database_url,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def hs256_by_hand(claims: dict[str, object], secret: bytes) -> str:
    """PyJWT refuses to sign with a PEM key as HMAC secret; an attacker would not."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_key(c: TestClient, **body: object) -> dict[str, object]:
    r = c.post("/api/keys", headers=bearer(ADMIN_KEY), json={"name": "k", **body})
    assert r.status_code == 201, r.text
    out: dict[str, object] = r.json()
    return out


def test_probes_need_no_credentials_and_the_rest_do(app_client: TestClient) -> None:
    for path in ("/", "/health", "/ready", "/live"):
        assert app_client.get(path).status_code == 200
    r = app_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and "missing credentials" in r.json()["error"]["message"]
    r = app_client.get("/api/tags")
    assert r.status_code == 401 and "missing credentials" in r.json()["error"]
    r = app_client.get("/v1/models", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]


def test_created_key_works_once_shown_and_revocation_takes_effect(app_client: TestClient) -> None:
    created = new_key(app_client, owner="alice")
    key = str(created["key"])
    assert key.startswith("llmgw-") and created["owner"] == "alice"
    assert (
        app_client.post("/v1/chat/completions", headers=bearer(key), json=CHAT).status_code == 200
    )
    listed = app_client.get("/api/keys", headers=bearer(ADMIN_KEY)).json()["keys"]
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    r = app_client.delete(f"/api/keys/{created['id']}", headers=bearer(ADMIN_KEY))
    assert r.status_code == 200 and r.json()["revoked"] is True
    time.sleep(KEY_CACHE_TTL_S + 0.05)
    r = app_client.post("/v1/chat/completions", headers=bearer(key), json=CHAT)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_a_key_in_constant_use_is_refused_within_a_second_of_revocation(
    app_client: TestClient,
) -> None:
    """Its cache entry is read again in the background before it expires: that
    must not keep a revoked key alive."""
    created = new_key(app_client, owner="bob")
    key = bearer(str(created["key"]))
    start = time.monotonic()
    revoked_at: float | None = None
    while time.monotonic() - start < 5:
        r = app_client.post("/v1/chat/completions", headers=key, json=CHAT)
        if r.status_code == 401:
            break
        assert r.status_code == 200
        if revoked_at is None and time.monotonic() - start > 0.6:
            revoke = app_client.delete(f"/api/keys/{created['id']}", headers=bearer(ADMIN_KEY))
            assert revoke.status_code == 200
            revoked_at = time.monotonic()
        time.sleep(0.02)
    assert revoked_at is not None and r.status_code == 401
    assert time.monotonic() - revoked_at <= KEY_CACHE_TTL_S + 0.2


def test_user_keys_see_only_their_own_and_cannot_administer(app_client: TestClient) -> None:
    alice = str(new_key(app_client, owner="alice")["key"])
    bob = new_key(app_client, owner="bob")
    r = app_client.post("/api/keys", headers=bearer(alice), json={"name": "x"})
    assert r.status_code == 403 and "admin" in r.json()["error"]
    mine = app_client.get("/api/keys", headers=bearer(alice)).json()["keys"]
    assert {k["owner"] for k in mine} == {"alice"}
    assert app_client.get(f"/api/keys/{bob['id']}", headers=bearer(alice)).status_code == 404
    assert app_client.delete(f"/api/keys/{bob['id']}", headers=bearer(alice)).status_code == 404
    assert app_client.delete("/api/keys/nosuchkey", headers=bearer(ADMIN_KEY)).status_code == 404


def test_bad_key_requests_are_explained(app_client: TestClient) -> None:
    h = bearer(ADMIN_KEY)
    assert app_client.post("/api/keys", headers=h, content=b"{no").status_code == 400
    r = app_client.post("/api/keys", headers=h, json={"name": "x", "scopes": ["root"]})
    assert r.status_code == 400 and "scopes" in r.json()["error"]
    r = app_client.post("/api/keys", headers=h, json={"name": "x", "colour": "red"})
    assert r.status_code == 400 and "colour" in r.json()["error"]
    r = app_client.post("/api/keys", headers=h, json={"name": "x", "expires_in_days": -1})
    assert r.status_code == 400
    r = app_client.post("/api/keys", headers=h, content=b"x" * 5_000_000)
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"expires_in_days": 1.7e233}, "'expires_in_days' is too large"),  # found by fuzzing
        ({"expires_in_days": 1e8}, "'expires_in_days' is too large"),  # past year 9999
        ({"limits": {"requests_per_minute": 2**63}}, "'limits.requests_per_minute'"),
        ({"limits": {"models": {"m": {"tokens_per_minute": 2**64}}}}, "'limits.models.m."),
    ],
)
def test_out_of_range_key_requests_are_a_400_naming_the_field(
    app_client: TestClient, body: dict[str, object], field: str
) -> None:
    r = app_client.post("/api/keys", headers=bearer(ADMIN_KEY), json={"name": "x", **body})
    assert r.status_code == 400 and field in r.json()["error"]


def test_allowed_models_are_enforced(app_client: TestClient) -> None:
    key = str(new_key(app_client, owner="carol", allowed_models=["dummy-echo"])["key"])
    ok = {**CHAT, "model": "dummy-echo"}
    assert app_client.post("/v1/chat/completions", headers=bearer(key), json=ok).status_code == 200
    r = app_client.post("/v1/chat/completions", headers=bearer(key), json=CHAT)
    assert r.status_code == 403 and "may not use model" in r.json()["error"]["message"]


def test_expired_key_is_refused(app_client: TestClient) -> None:
    key = str(new_key(app_client, owner="dan", expires_at="2001-01-01T00:00:00Z")["key"])
    r = app_client.get("/v1/models", headers=bearer(key))
    assert r.status_code == 401


def test_hs256_tokens(app_client: TestClient) -> None:
    good = mint_token(SECRET, "erin")
    assert app_client.get("/v1/models", headers=bearer(good)).status_code == 200
    admin = mint_token(SECRET, "root", scopes=["admin"])
    assert app_client.get("/api/keys", headers=bearer(admin)).status_code == 200
    user = mint_token(SECRET, "erin")
    assert app_client.post("/api/keys", headers=bearer(user), json={"name": "x"}).status_code == 403
    expired = mint_token(SECRET, "erin", ttl_s=-3600)
    r = app_client.get("/v1/models", headers=bearer(expired))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    forged = mint_token("another-secret-of-sufficient-length-0123456789", "erin")
    assert app_client.get("/v1/models", headers=bearer(forged)).status_code == 401
    assert app_client.get("/v1/models", headers=bearer("not.a.jwt")).status_code == 401


def test_tokens_that_are_neither_keys_nor_jwts_are_named_as_such(app_client: TestClient) -> None:
    r = app_client.get("/v1/models", headers=bearer("sk-some-other-vendors-key"))
    assert r.status_code == 401
    assert "neither an API key ('llmgw-<id>-<secret>') nor a JWT" in r.json()["error"]["message"]
    r = app_client.get("/api/tags", headers=bearer("llmgw-justanid"))  # Ollama's error shape
    assert r.status_code == 401 and "malformed API key" in r.json()["error"]


def test_jwt_limit_claims_apply_per_model(app_client: TestClient) -> None:
    token = mint_token(
        SECRET,
        "frank",
        limits={"requests_per_minute": 5, "models": {"dummy-echo": {"requests_per_minute": 1}}},
    )

    def ask(model: str) -> httpx.Response:
        body = {**CHAT, "model": model}
        return app_client.post("/v1/chat/completions", headers=bearer(token), json=body)

    assert [ask("dummy-echo").status_code, ask("dummy-echo").status_code] == [200, 429]
    assert ask("dummy").headers["x-ratelimit-remaining-requests"] == "4"
    bad = mint_token(SECRET, "frank", limits={"models": {"dummy": {"concurrent_requests": "2"}}})
    r = app_client.get("/v1/models", headers=bearer(bad))
    assert r.status_code == 401
    assert "limits.models.dummy.concurrent_requests" in r.json()["error"]["message"]


def test_alg_none_and_algorithm_confusion_are_refused(
    app_client: TestClient, rsa_key: tuple[rsa.RSAPrivateKey, Path]
) -> None:
    claims = {"sub": "mallory", "exp": int(time.time()) + 60}
    unsigned = jwt.encode(claims, None, algorithm="none")
    r = app_client.get("/v1/models", headers=bearer(unsigned))
    assert r.status_code == 401 and "not accepted" in r.json()["error"]["message"]
    public_pem = rsa_key[1].read_bytes()
    # HS256 "signed" with the RSA public key as the HMAC secret: the classic confusion.
    confused = hs256_by_hand(claims, public_pem)
    assert app_client.get("/v1/models", headers=bearer(confused)).status_code == 401
    rs256 = jwt.encode(claims, rsa_key[0], algorithm="RS256")
    assert app_client.get("/v1/models", headers=bearer(rs256)).status_code == 200


def test_auth_can_be_turned_off(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(engine_dummy=True, data_dir=tmp_path, auth=False))) as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_failing_key_store_is_a_503_in_the_callers_protocol(tmp_path: Path) -> None:
    settings = Settings(engine_dummy=True, data_dir=tmp_path, admin_key=ADMIN_KEY)
    with TestClient(create_app(settings)) as c:
        import sqlite3

        db = sqlite3.connect(tmp_path / "gateway.db")
        db.execute("ALTER TABLE api_keys RENAME TO api_keys_gone")  # the store breaks
        db.commit()
        db.close()
        unknown = {"Authorization": "Bearer llmgw-nosuchkey01-" + "x" * 32}
        r = c.post("/v1/chat/completions", headers=unknown, json={"model": "dummy"})
        assert r.status_code == 503
        assert "credentials cannot be checked" in r.json()["error"]["message"]
        r = c.post("/api/chat", headers=unknown, json={"model": "dummy"})
        assert r.status_code == 503
        assert "credentials cannot be checked" in r.json()["error"]
