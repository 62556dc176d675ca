"""The package's shape: no import cycle, modules and functions of a readable size,
a package __init__ that imports nothing heavy, and tests/ mirroring src/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

import llm_gateway

PACKAGE = Path(llm_gateway.__file__).parent
TESTS = Path(__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_the_import_graph_has_no_cycle() -> None:
    graph = grimp.build_graph("llm_gateway", cache_dir=None)
    cycles = [
        (module, other)
        for module in sorted(graph.modules)
        for other in sorted(graph.find_modules_directly_imported_by(module))
        if graph.chain_exists(importer=other, imported=module)
    ]
    assert cycles == [], [graph.find_shortest_chain(b, a) for a, b in cycles[:3]]


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_400_lines() -> None:
    long = {p.relative_to(PACKAGE).as_posix(): n for p in sources()
            if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}  # fmt: skip
    assert long == {}


def test_no_function_is_over_60_lines() -> None:
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({size})")
    assert long == []


def test_every_module_says_what_it_holds() -> None:
    bare = [p.relative_to(PACKAGE).as_posix() for p in sources()
            if ast.get_docstring(ast.parse(p.read_text())) is None]  # fmt: skip
    assert bare == []


def test_importing_the_package_loads_no_framework_database_or_engine() -> None:
    code = "import sys, llm_gateway; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True,
                                capture_output=True, text=True).stdout.split())  # fmt: skip
    heavy = {"starlette", "sqlalchemy", "pydantic", "uvicorn", "prometheus_client", "llama_cpp"}
    assert loaded & heavy == set()


def test_tests_mirror_the_package() -> None:
    """Every test folder below tests/ is a package folder of the same name, or a folder of
    the repository's own (deploy/: the deployment files)."""
    folders = {p.parent.relative_to(TESTS) for p in TESTS.rglob("test_*.py")}
    missing = [
        str(f)
        for f in folders
        if f != Path(".") and not (PACKAGE / f).is_dir() and not (TESTS.parent / f).is_dir()
    ]
    assert missing == []
