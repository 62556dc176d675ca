"""The build step pyproject.toml cannot express: generate the gRPC code at build time.

``build_py`` runs protoc (grpcio-tools, a build requirement) on
src/llm_gateway/api/rpc/gateway.proto before it collects the package, so a wheel,
``pip install .`` and ``pip install -e .`` all get
``llm_gateway/api/rpc/_generated/gateway_pb2{,_grpc}.py`` (and ``.pyi``); nothing
generated is committed. ``make proto`` calls ``generate_grpc_code()`` after the
.proto changes. Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "src" / "llm_gateway" / "api" / "rpc"
PROTO = SOURCE / "gateway.proto"
# The .proto is compiled as if it lay in the _generated package, so that the
# generated gateway_pb2_grpc imports `from llm_gateway.api.rpc._generated import
# gateway_pb2` (protoc writes imports from the path it compiles the file under).
PACKAGE_PATH = "llm_gateway/api/rpc/_generated"


def generate_grpc_code() -> None:
    """protoc --python_out --pyi_out --grpc_python_out for gateway.proto, into src/."""
    from grpc_tools import protoc

    out = ROOT / "src"
    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE_PATH}={SOURCE}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",  # the well-known types
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"{PACKAGE_PATH}/{PROTO.name}",
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")


class BuildPyWithGrpc(build_py):
    """build_py that generates the gRPC code first (in editable mode too)."""

    def run(self) -> None:
        generate_grpc_code()
        super().run()


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithGrpc})
