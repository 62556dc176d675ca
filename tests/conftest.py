"""Shared fixtures: settings in a temporary data directory, in-process dummy app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from llm_gateway import Settings, create_app


@pytest.fixture
def dummy_settings(tmp_path: Path) -> Settings:
    return Settings(engine_dummy=True, data_dir=tmp_path, max_body_bytes=4096)


@pytest.fixture
def client(dummy_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(dummy_settings)) as c:
        yield c
