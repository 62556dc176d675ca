"""Tests of the gRPC interface (llm_gateway.api.rpc)."""
