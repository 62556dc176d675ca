"""The gRPC interface (llmgw.v1.Gateway in gateway.proto), on its own port when
GATEWAY_GRPC_PORT is set: converters (convert), per-call auth and usage (calls),
errors as statuses (status), the servicer (service) and the grpc.aio server (server)."""
