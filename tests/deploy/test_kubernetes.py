"""The Kubernetes manifests (deploy/kubernetes): the base and each overlay render
with `kubectl kustomize`, every object validates strictly against the API schemas,
and the Deployment behaves as the gateway needs (probes, drain, security, config,
references, selectors)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llm_gateway.auth.keys import parse_key
from llm_gateway.core.model_specs import load_specs
from llm_gateway.core.registry import builtin_kinds
from llm_gateway.settings import Settings

KUSTOMIZE_ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
TARGETS = ("base", "overlays/scale", "overlays/gpu")
K8S_VERSION = "1.37.0"  # the newest schema kubernetes-validate 1.37.0 bundles
DRAIN_S = 30  # llm_gateway.server.DRAIN_S
MODEL_LOAD_S = 120  # what a start-up (requantize + load) may take at least

Obj = dict[str, Any]


def _render(target: str, tmp: Path) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: install it (its `kubectl kustomize` renders these)")
    tree = tmp / "kubernetes"
    shutil.copytree(KUSTOMIZE_ROOT, tree)
    shutil.copy(tree / "base" / "secrets.env.example", tree / "base" / "secrets.env")
    done = subprocess.run(
        [kubectl, "kustomize", str(tree / target)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {target} failed:\n{done.stderr}"
    return [o for o in yaml.safe_load_all(done.stdout) if o]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    target: str = request.param
    return _render(target, tmp_path_factory.mktemp(target.replace("/", "-")))


@pytest.fixture(scope="module")
def by_target(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    return {t: _render(t, tmp_path_factory.mktemp(t.replace("/", "-"))) for t in TARGETS[1:]}


def _one(objs: list[Obj], kind: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _named(objs: list[Obj], kind: str, prefix: str) -> Obj:
    """A generated object: its name is `prefix-<hash>`."""
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, f"expected one {kind} {prefix}-*, got {len(found)}"
    return found[0]


def _container(objs: list[Obj]) -> Obj:
    containers: list[Obj] = _one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(objs: list[Obj]) -> dict[str, str]:
    """The container's plain environment: envFrom ConfigMaps, then env values."""
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    container = _container(objs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(by_name["ConfigMap", source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_every_object_validates_strictly(rendered: list[Obj]) -> None:
    errors = []
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:  # its text holds the whole schema
            where = "/".join(str(p) for p in exc.absolute_path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_probes_follow_the_gateway_routes(rendered: list[Obj]) -> None:
    container = _container(rendered)
    http = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert http == 8080
    for probe, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/ready", "port": "http"}  # waits for the model
    assert startup.get("failureThreshold", 3) * startup.get("periodSeconds", 10) >= MODEL_LOAD_S


def test_grace_period_outlasts_the_drain(rendered: list[Obj]) -> None:
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    pre_stop = _container(rendered).get("lifecycle", {}).get("preStop", {})
    pre_stop_s: int = pre_stop.get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + DRAIN_S


def test_runs_as_non_root_with_a_read_only_root(rendered: list[Obj]) -> None:
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    container = _container(rendered)
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {_env(rendered)["GATEWAY_DATA_DIR"], "/tmp"} <= mounts  # the writable places


def test_models_file_is_mounted_and_loads(rendered: list[Obj], tmp_path: Path) -> None:
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    config = Path(_env(rendered)["GATEWAY_CONFIG"])
    mounts = _container(rendered)["volumeMounts"]
    mount = next(m for m in mounts if m["mountPath"] == str(config.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    models = _named(rendered, "ConfigMap", "llm-gateway-models")
    assert volume["configMap"]["name"] == models["metadata"]["name"]
    models_file = tmp_path / config.name
    models_file.write_text(models["data"][config.name])
    specs = load_specs(Settings(config=models_file, data_dir=tmp_path), builtin_kinds())
    assert [(s.name, s.aliases, s.preload) for s in specs] == [
        ("smollm2-135m-instruct", ("smollm2", "smollm2:135m"), True)
    ]


def test_env_references_exist(rendered: list[Obj]) -> None:
    data = {(o["kind"], o["metadata"]["name"]): o.get("data", {}) for o in rendered}
    container = _container(rendered)
    for source in container.get("envFrom", []):
        assert ("ConfigMap", source["configMapRef"]["name"]) in data
    for entry in container.get("env", []):
        for ref, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if ref in entry.get("valueFrom", {}):
                target = entry["valueFrom"][ref]
                assert target["key"] in data.get((kind, target["name"]), {}), entry["name"]
    secret_env = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert {"JWT_SECRET", "GATEWAY_ADMIN_KEY"} <= secret_env
    assert _env(rendered)["GATEWAY_LOG_FORMAT"] == "json"


def test_example_secrets_are_refused_by_the_gateway(rendered: list[Obj]) -> None:
    secret = _named(rendered, "Secret", "llm-gateway-secrets")
    assert set(secret["data"]) == {"JWT_SECRET", "GATEWAY_ADMIN_KEY"}
    example = (KUSTOMIZE_ROOT / "base" / "secrets.env.example").read_text()
    values = dict(ln.split("=", 1) for ln in example.splitlines() if ln and ln[0] != "#")
    assert parse_key(values["GATEWAY_ADMIN_KEY"]) is None  # so the start stops: edit it


def test_service_and_pdb_select_the_pods(rendered: list[Obj]) -> None:
    template = _one(rendered, "Deployment")["spec"]["template"]
    labels: dict[str, str] = template["metadata"]["labels"]
    ports = {p["name"] for p in _container(rendered)["ports"]}
    service = _one(rendered, "Service")
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert {p["targetPort"] for p in service["spec"]["ports"]} == ports == {"http", "grpc"}
    assert _selects(_one(rendered, "PodDisruptionBudget")["spec"]["selector"], labels)
    assert labels["app.kubernetes.io/name"] == "llm-gateway"
    grpc = next(p["containerPort"] for p in _container(rendered)["ports"] if p["name"] == "grpc")
    assert _env(rendered)["GATEWAY_GRPC_PORT"] == str(grpc)


def test_scale_overlay_shares_state_and_autoscales(by_target: dict[str, list[Obj]]) -> None:
    objs = by_target["overlays/scale"]
    deployment = _one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    env = _env(objs)
    assert env["DATABASE_URL"].startswith("postgresql://")
    assert env["REDIS_URL"].startswith("redis://")
    hpa = _one(objs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["minReplicas"] == 3 and hpa["maxReplicas"] == 10
    assert _one(objs, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2,
        "selector": deployment["spec"]["selector"],
    }
    # The Files API's folder is one volume every replica mounts (ReadWriteMany).
    claim = _one(objs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in _container(objs)["volumeMounts"] if m["mountPath"].endswith("/files")]
    assert mount["mountPath"] == "/var/lib/llm-gateway/files"  # GATEWAY_FILES_DIR's default
    claimed = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claimed == claim["metadata"]["name"]


def test_gpu_overlay_asks_for_a_gpu(by_target: dict[str, list[Obj]]) -> None:
    objs = by_target["overlays/gpu"]
    container = _container(objs)
    assert container["image"] == "llm-gateway:0.1.0-cuda"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    pod = _one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"]
