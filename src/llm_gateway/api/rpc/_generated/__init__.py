"""protoc's output for ../gateway.proto: gateway_pb2 (messages), gateway_pb2_grpc (stubs).

Generated at install (setup.py) or by ``make proto``; only this file is committed.
"""
