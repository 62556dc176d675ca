"""The Docker image, for real: hadolint passes the Dockerfile; the image's own start
command (its CMD with its ENV) serves the built-in model to the openai client and
drains to exit 0 on SIGTERM; and `compose up` of the default profile builds the
image on this machine's Docker engine (scripts/ensure-docker starts one) and serves
the built-in model from the container, as uid 10001, healthy by its HEALTHCHECK,
exiting 0 when compose stops it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, free_port
from tests.deploy.test_compose import ROOT, compose_command

pytestmark = pytest.mark.model

DOCKERFILE = ROOT / "Dockerfile"
BUILD_TIMEOUT_S = 3600  # a first build compiles llama.cpp; later ones reuse its layer
READY_TIMEOUT_S = 180.0
CHAT = [{"role": "user", "content": "Say hello."}]


def instructions(stage: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of one stage of the Dockerfile, continuations joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    out: list[tuple[str, str]] = []
    current = None
    for line in lines:
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            current = rest.split()[-1]
        elif current == stage:
            out.append((word.upper(), rest.strip()))
    return out


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions("runtime"):
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return env


def image_json(word: str) -> list[str]:
    """The exec-form array of the runtime stage's CMD, or HEALTHCHECK's CMD."""
    rest = next(r for w, r in instructions("runtime") if w == word)
    array: list[str] = json.loads(rest[rest.index("[") :])
    return array


def wait_ready(base: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{base} was not ready in {READY_TIMEOUT_S:.0f} s")


def chat_round_trip(base: str) -> None:
    """What a user does first: one answer whole, one streamed, on the built-in model."""
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=ADMIN_KEY, max_retries=0)
    whole = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=8)  # type: ignore[arg-type]
    assert whole.choices[0].message.content and whole.usage and whole.usage.completion_tokens
    stream = client.chat.completions.create(
        model="smollm2",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=8,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run(
        [str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_start_command_serves_and_drains(tmp_path: Path) -> None:
    """CMD with the image's ENV, run from this checkout's environment."""
    port = free_port()
    env = {**os.environ, **image_env()}
    env.update(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), GATEWAY_DATA_DIR=str(tmp_path))
    env.update(GATEWAY_ADMIN_KEY=ADMIN_KEY, PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    assert env["GATEWAY_LOG_FORMAT"] == "json" and image_json("CMD") == ["llm-gateway", "serve"]
    proc = subprocess.Popen(image_json("CMD"), env=env, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        chat_round_trip(base)
        check = image_json("HEALTHCHECK")
        assert subprocess.run(check, env=env, timeout=10).returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        assert subprocess.run(check, env=env, timeout=10, capture_output=True).returncode != 0
    finally:
        proc.kill()
        proc.wait()


def extra_ca_certs() -> str:
    """The CA certificates this host added (a TLS-intercepting proxy's), for pip in the
    image's build stage: the build then reaches PyPI the way this host does."""
    local = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    return "".join(p.read_text() for p in local)


@pytest.fixture(scope="module")
def compose_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`compose up -d` (the default profile: one gateway) in a project of its own; down -v
    after."""
    port = free_port()
    env = {**os.environ, "GATEWAY_PORT": str(port), "GATEWAY_ADMIN_KEY": ADMIN_KEY}
    env["EXTRA_CA_CERT"] = extra_ca_certs()
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("")
    name = f"llmgw-test-{uuid.uuid4().hex[:8]}"
    cmd = [*compose_command(), "-p", name, "--env-file", str(env_file)]
    cmd += ["-f", str(ROOT / "compose.yaml")]

    def run(*args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        return done.stdout

    run("build", "gateway", timeout=BUILD_TIMEOUT_S)
    try:
        run("up", "-d")
        container = run("ps", "-q", "gateway").strip()
        yield {"base": f"http://127.0.0.1:{port}", "container": container, "name": name}
    finally:
        subprocess.run([*cmd, "down", "-v"], env=env, capture_output=True, timeout=120)


def inspect(container: str, template: str) -> str:
    done = subprocess.run(
        ["docker", "inspect", "--format", template, container], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_compose_up_serves_the_built_in_model_from_the_container(
    compose_project: dict[str, str],
) -> None:
    container = compose_project["container"]
    wait_ready(compose_project["base"])
    chat_round_trip(compose_project["base"])
    user = subprocess.run(["docker", "exec", container, "id", "-u"], capture_output=True, text=True)
    assert user.stdout.strip() == "10001"
    healthcheck = json.loads(inspect(container, "{{json .Config.Healthcheck.Test}}"))
    assert healthcheck[0] == "CMD"
    check = subprocess.run(["docker", "exec", container, *healthcheck[1:]], capture_output=True)
    assert check.returncode == 0, check.stderr


def test_compose_stop_drains_the_container_to_exit_0(compose_project: dict[str, str]) -> None:
    """Runs after the serving test (same module fixture): stop now, then the exit code."""
    container = compose_project["container"]
    subprocess.run(
        ["docker", "stop", "--time", "40", container], capture_output=True, timeout=60
    ).check_returncode()
    assert inspect(container, "{{.State.ExitCode}}") == "0"
