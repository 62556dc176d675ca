"""A channel with the generated stubs to the api tests' one gateway (its gRPC port
is open: tests/api/conftest.py ``stack``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from llm_gateway.api.rpc._generated import gateway_pb2_grpc
from tests.conftest import ADMIN_KEY

ADMIN = (("authorization", f"Bearer {ADMIN_KEY}"),)
"""The admin key as call metadata."""


@pytest.fixture(scope="package")
def channel(stack: dict[str, Any]) -> Iterator[grpc.Channel]:
    """A channel to the package's gateway (tests/api/conftest.py ``stack``), whose
    gRPC port is open."""
    with grpc.insecure_channel(stack["target"]) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> Any:
    return gateway_pb2_grpc.GatewayStub(channel)
