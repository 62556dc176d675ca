"""compose.yaml and the monitoring files, checked by compose itself for every profile
(`docker compose` where installed, else Debian's docker-compose, which
scripts/ensure-docker installs) and for what each shape promises: the default
gateway keeps its state and has time to drain, the scale profile's replicas share
the PostgreSQL and Redis it starts behind nginx, the GPU build reserves a GPU,
Prometheus finds every gateway, and the Grafana dashboard asks only for metrics the
gateway exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from llm_gateway import Settings
from llm_gateway.server import DRAIN_S
from tests.conftest import admin_client

ROOT = Path(__file__).resolve().parents[2]
PROFILES: dict[str, list[str]] = {
    "default": [],
    "gpu": ["gpu"],
    "scale": ["scale"],
    "monitoring": ["scale", "monitoring"],
}
GATEWAY_PORT = 8080  # the image's GATEWAY_PORT (Dockerfile)
DATA_DIR = "/var/lib/llm-gateway"  # the image's GATEWAY_DATA_DIR


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.fail("no compose found: scripts/ensure-docker installs Debian's docker-compose")
    return [legacy]


def compose_config(profiles: list[str], tmp_path: Path) -> dict[str, Any]:
    """`compose config` for these profiles, without the caller's .env or variables:
    the active services only (Debian's compose 1.29 lists every one)."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    flags = [f for p in profiles for f in ("--profile", p)]
    cmd = [*compose_command(), "--env-file", str(env_file), "-f", str(ROOT / "compose.yaml")]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([*cmd, *flags, "config"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    services = config["services"]
    config["services"] = {
        name: s
        for name, s in services.items()
        if not s.get("profiles") or set(s["profiles"]) & set(profiles)
    }
    return config


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("compose")
    return {name: compose_config(profiles, tmp) for name, profiles in PROFILES.items()}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", duration))


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (or volume name) of each of the service's volumes."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = volume["source"]
        else:
            source, target, *_ = volume.split(":")
            out[target] = source
    return out


def published(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port."""
    out = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out[int(port["target"])] = int(port["published"])
        else:
            host, container = str(port).rsplit(":", 1)
            out[int(container)] = int(host.rsplit(":", 1)[-1])
    return out


def test_default_profile_is_one_gateway_that_keeps_its_state(configs: dict[str, Any]) -> None:
    services = configs["default"]["services"]
    assert set(services) == {"gateway"}
    gateway = services["gateway"]
    assert published(gateway) == {GATEWAY_PORT: 8080}
    assert mounts(gateway)[DATA_DIR] == "gateway-data"  # SQLite, keys, usage survive
    assert "DATABASE_URL" not in env_of(gateway) and "REDIS_URL" not in env_of(gateway)
    assert seconds(gateway["stop_grace_period"]) > DRAIN_S
    assert gateway["image"] == "llm-gateway:0.1.0"
    assert Path(gateway["build"]["context"]) == ROOT


def test_scale_profile_shares_postgres_and_redis_behind_nginx(configs: dict[str, Any]) -> None:
    services = configs["scale"]["services"]
    assert {"replica", "lb", "postgres", "redis"} <= set(services)
    replica = services["replica"]
    assert replica["deploy"]["replicas"] == 3
    assert not published(replica)  # reached through the balancer only
    # Uploaded files and batch outputs: one volume for all replicas, where the image's
    # GATEWAY_FILES_DIR default (<data dir>/files) puts them.
    assert mounts(replica)[f"{DATA_DIR}/files"] == "batch-files"
    env = env_of(replica)
    database, redis = urlsplit(env["DATABASE_URL"]), urlsplit(env["REDIS_URL"])
    assert (database.hostname, redis.hostname) == ("postgres", "redis")
    pg_env = env_of(services["postgres"])
    assert (database.username, database.password) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
    )
    assert database.path.strip("/") == pg_env["POSTGRES_DB"]
    for dependency in ("postgres", "redis"):
        assert replica["depends_on"][dependency]["condition"] == "service_healthy"
        assert services[dependency]["healthcheck"]["test"]
    assert seconds(replica["stop_grace_period"]) > DRAIN_S


def test_the_balancer_serves_the_repo_nginx_files_and_finds_the_replicas(
    configs: dict[str, Any],
) -> None:
    lb = configs["scale"]["services"]["lb"]
    files = mounts(lb)
    conf = Path(files["/etc/nginx/conf.d/default.conf"])
    upstreams = Path(files["/etc/nginx/gateway-upstreams.conf"])
    assert conf == ROOT / "deploy/nginx/gateway.conf" and conf.is_file()
    assert upstreams == ROOT / "deploy/nginx/gateway-upstreams.conf" and upstreams.is_file()
    assert "include gateway-upstreams.conf;" in conf.read_text()
    assert re.findall(r"listen (\d+);", conf.read_text()) == ["8080"]
    assert published(lb) == {8080: 8000}
    servers = re.findall(r"^server (\S+):(\d+)", upstreams.read_text(), re.M)
    assert servers == [("replica", str(GATEWAY_PORT))]


def test_gpu_profile_builds_with_cuda_and_reserves_a_gpu(configs: dict[str, Any]) -> None:
    gpu = configs["gpu"]["services"]["gateway-gpu"]
    assert gpu["build"]["args"]["CUDA"] == "1"
    assert "cuda" in gpu["build"]["args"]["RUNTIME_IMAGE"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    assert (
        published(gpu)[GATEWAY_PORT]
        != published(configs["gpu"]["services"]["gateway"])[GATEWAY_PORT]
    )  # both may run side by side


def test_prometheus_scrapes_every_gateway_service(configs: dict[str, Any]) -> None:
    services = configs["monitoring"]["services"]
    prometheus = services["prometheus"]
    config_file = Path(mounts(prometheus)["/etc/prometheus/prometheus.yml"])
    assert config_file == ROOT / "deploy/prometheus/prometheus.yml"
    job = yaml.safe_load(config_file.read_text())["scrape_configs"][0]
    assert job["job_name"] == "llm-gateway" and job["metrics_path"] == "/metrics"
    sd = job["dns_sd_configs"][0]
    assert sd["port"] == GATEWAY_PORT
    gateways = {"gateway", "gateway-gpu", "replica"}
    assert set(sd["names"]) == gateways
    assert all(name in compose_config_services() for name in gateways)


def compose_config_services() -> set[str]:
    return set(yaml.safe_load((ROOT / "compose.yaml").read_text())["services"])


def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        (ROOT / "deploy/grafana/dashboards/llm-gateway.json").read_text()
    )
    return result


def test_grafana_provisions_the_dashboard_on_the_prometheus_source(
    configs: dict[str, Any],
) -> None:
    grafana = configs["monitoring"]["services"]["grafana"]
    files = mounts(grafana)
    provisioning = Path(files["/etc/grafana/provisioning"])
    sources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    source = sources["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    providers = yaml.safe_load((provisioning / "dashboards/llm-gateway.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert Path(files[path]) == ROOT / "deploy/grafana/dashboards"
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])


def exported_metric_names(settings: Settings) -> set[str]:
    """The series names the gateway's /metrics exposes (families with no samples yet
    count, under the names their samples will have)."""
    with admin_client(settings) as client:
        chat = {"model": "dummy", "messages": [{"role": "user", "content": "hi"}]}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        text = client.get("/metrics").text
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    names = {"up"}  # Prometheus' own, per target
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_dashboard_panels_query_metrics_the_gateway_exports(dummy_settings: Settings) -> None:
    exported = exported_metric_names(dummy_settings)
    panels = dashboard()["panels"]
    asked = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"\b(llmgw_[a-z_]+|up)\b", target["expr"])
    }
    assert asked - exported == set()
    titles = " / ".join(p["title"].lower() for p in panels)
    for topic in ("requests", "latency", "first token", "tokens per second", "rate-limit"):
        assert topic in titles
    assert "engine queue" in titles and "usage records" in titles
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, " in exprs
