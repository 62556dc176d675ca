"""Shared fixtures: settings in a temporary data directory, an in-process app with an admin key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from llm_gateway import Settings, create_app

ADMIN_KEY = "llmgw-testadmin0001-not-a-real-secret"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def dummy_settings(tmp_path: Path) -> Settings:
    return Settings(engine_dummy=True, data_dir=tmp_path, max_body_bytes=4096, admin_key=ADMIN_KEY)


def admin_client(settings: Settings) -> TestClient:
    """A TestClient (use it with `with`) that sends the admin key."""
    return TestClient(create_app(settings), headers=AUTH)


@pytest.fixture
def client(dummy_settings: Settings) -> Iterator[TestClient]:
    with admin_client(dummy_settings) as c:
        yield c
