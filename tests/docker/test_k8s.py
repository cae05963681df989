"""docker/k8s/: every manifest validates against Kubernetes' own schema (strict, a pinned version), and says
what the app and the image actually are: probe paths and ports, settings names, the image's entrypoint, user,
cache folder, and a drain that fits in the grace period."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.settings import ServiceSettings

K8S = Path(__file__).resolve().parents[2] / "docker" / "k8s"
DOCKERFILE = (K8S.parent / "Dockerfile").read_text()
KUBERNETES_VERSION = "1.33.0"
# plain Kubernetes objects; rayservice.yaml is KubeRay's custom resource, checked against Ray's own schema below
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "rayservice.yaml")
SERVE_YAML = K8S.parent / "ray" / "serve.yaml"
RAY_DOCKERFILE = (K8S.parent / "ray" / "Dockerfile").read_text()


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def dockerfile_env() -> dict[str, str]:
    env = {}
    for line in re.findall(r"^ENV (.+)$", DOCKERFILE, flags=re.M):
        env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_validates_strictly(path):
    kv = pytest.importorskip("kubernetes_validate")
    for doc in yaml.safe_load_all(path.read_text()):
        kv.validate(doc, KUBERNETES_VERSION, strict=True)  # raises ValidationError with the path at fault


def test_the_deployment_runs_the_image_as_built():
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    entrypoint = re.findall(r'^ENTRYPOINT \["([^"]+)"\]', DOCKERFILE, flags=re.M)[-1]
    assert container.get("command", [entrypoint]) == [entrypoint]  # the image's own entrypoint, byol-serve
    env = dockerfile_env()
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["BYOL_PORT"]) and f"EXPOSE {env['BYOL_PORT']}" in DOCKERFILE
    uid = int(re.search(r"--uid (\d+)", DOCKERFILE).group(1))
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["readOnlyRootFilesystem"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert env["HF_HOME"] in mounts and not mounts[env["HF_HOME"]].get("readOnly")  # the Hub cache: own volume
    model = load("configmap.yaml")["data"]["BYOL_MODEL"]
    assert any(model.startswith(path + "/") and m.get("readOnly") for path, m in mounts.items())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from hub import BYOLModel, ModelConfig, PreprocessConfig

    folder = tmp_path_factory.mktemp("k8s") / "model"
    BYOLModel(ModelConfig(architecture="resnet18", preprocessing=PreprocessConfig(resize_size=36, crop_size=32))
              ).save_pretrained(folder, onnx=True, transformers=False)
    return folder


def test_every_setting_named_exists_in_the_app(monkeypatch):
    fields = {f"BYOL_{name.upper()}" for name in ServiceSettings.model_fields}
    data = load("configmap.yaml")["data"]
    container = load("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    named = set(data) | {e["name"] for e in container.get("env", []) if e["name"].startswith("BYOL_")}
    assert named and named <= fields, named - fields
    for key, value in data.items():  # and the values parse as the app parses its environment
        monkeypatch.setenv(key, value)
    ServiceSettings()
    assert container["envFrom"][0]["configMapRef"]["name"] == load("configmap.yaml")["metadata"]["name"]
    keys = next(e for e in container["env"] if e["name"] == "BYOL_API_KEYS")["valueFrom"]["secretKeyRef"]
    assert not keys.get("optional"), "the API keys' Secret must be required: without it the pod would serve openly"
    secret = load("secret.example.yaml")
    assert keys["name"] == secret["metadata"]["name"] and keys["key"] in secret["stringData"]
    monkeypatch.setenv("BYOL_API_KEYS", secret["stringData"][keys["key"]])
    assert ServiceSettings().api_keys == ["change-me"]  # the Secret's format is one the app reads


def test_probes_are_the_apps_routes_and_need_no_key(tiny_model):
    from tests.service.conftest import make_client

    container = load("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/ready"
    assert probes["livenessProbe"]["path"] == "/health"
    assert {p["port"] for p in probes.values()} == {container["ports"][0]["name"]}
    with make_client(tiny_model, api_keys=["secret"]) as client:
        for probe in probes.values():
            assert client.get(probe["path"]).status_code == 200, probe  # no Authorization header
        assert client.post("/embed", files={"images": ("a.jpg", b"x", "image/jpeg")}).status_code == 401


def test_service_hpas_and_pdb_point_at_the_deployment():
    deployment = load("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = load("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == deployment["spec"]["template"]["spec"]["containers"][0][
        "ports"][0]["name"]
    for name in ("hpa.yaml", "hpa-queue-depth.yaml"):
        target = load(name)["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"], target["name"]) == (
            deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])
    assert load("pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    metric = load("hpa-queue-depth.yaml")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    from service.metrics import Metrics

    assert metric in {m.name for m in Metrics().registry.collect()}  # a gauge the app really exports
    assert metric in load("prometheus-adapter-rules.yaml")["data"]["config.yaml"]


def test_the_drain_fits_in_the_grace_period():
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(load("configmap.yaml")["data"]["BYOL_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain


def test_rayservice_runs_the_serve_config_application():
    """docker/k8s/rayservice.yaml's serveConfigV2 and docker/ray/serve.yaml: both Ray's ServeDeploySchema, equal
    after parsing, and what they name exists: the import path is the app, the deployment is ours, every BYOL_*
    variable is a setting that parses, and the cluster around it fits the application."""
    pytest.importorskip("ray.serve")
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    import service.ray_serve as ray_serve

    rayservice = load("rayservice.yaml")
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    from_k8s = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    from_file = yaml.safe_load(SERVE_YAML.read_text())
    assert from_k8s == from_file
    parsed = ServeDeploySchema.model_validate(from_file)
    assert ServeDeploySchema.model_validate(from_k8s) == parsed
    (app,) = parsed.applications
    module, _, attr = app.import_path.partition(":")
    assert module == ray_serve.__name__ and isinstance(getattr(ray_serve, attr), Application)
    env = app.runtime_env["env_vars"]
    byol = {k: v for k, v in env.items() if k.startswith("BYOL_")}
    assert set(byol) <= {f"BYOL_{name.upper()}" for name in ServiceSettings.model_fields}
    settings = ServiceSettings(**{k[5:].lower(): v for k, v in byol.items()})
    (deployment,) = app.deployments
    assert deployment.name == ray_serve.DEPLOYMENT_NAME
    assert deployment.graceful_shutdown_timeout_s == settings.drain_timeout_s
    assert deployment.max_replicas_per_node == 1

    cluster = rayservice["spec"]["rayClusterConfig"]
    assert f"rayproject/ray:{cluster['rayVersion']}-" in RAY_DOCKERFILE  # the image's Ray is the one declared
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head
    (workers,) = cluster["workerGroupSpecs"]
    assert float(workers["rayStartParams"]["num-cpus"]) == deployment.ray_actor_options.num_cpus
    assert workers["maxReplicas"] == deployment.autoscaling_config["max_replicas"] if isinstance(deployment.autoscaling_config, dict) else deployment.autoscaling_config.max_replicas  # one replica per node
    callback = f"{ray_serve.PROXY_CALLBACK_ENV}={ray_serve.PROXY_CALLBACK}"
    assert callback in RAY_DOCKERFILE
    pods = [cluster["headGroupSpec"]["template"], workers["template"]]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert {e["name"]: e["value"] for e in container["env"]}[ray_serve.PROXY_CALLBACK_ENV] == ray_serve.PROXY_CALLBACK
        assert {"containerPort": from_file["http_options"]["port"], "name": "serve"} in container["ports"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert env["HF_HOME"] in mounts  # the Hub cache on its own volume
