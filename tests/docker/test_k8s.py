"""docker/k8s/: every manifest validates against Kubernetes' own schema (strict, a pinned version), and says
what the app and the image actually are: probe paths and ports, settings names, the image's entrypoint, user,
cache folder, and a drain that fits in the grace period."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.server.settings import ServiceSettings
from tests.support import REPO

K8S = REPO / "docker" / "k8s"
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
    from tests.support.server import make_client

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
    from service.server.metrics import Metrics

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
        named = {e["name"]: e for e in container["env"]}
        assert named[ray_serve.PROXY_CALLBACK_ENV]["value"] == ray_serve.PROXY_CALLBACK
        assert {"containerPort": from_file["http_options"]["port"], "name": "serve"} in container["ports"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert env["HF_HOME"] in mounts  # the Hub cache on its own volume


def _ray_pods() -> list[dict]:
    cluster = load("rayservice.yaml")["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]


def test_the_ray_cluster_is_closed_to_the_cluster_network():
    """Ray's token auth on; the API keys from the required Secret on every node (the replicas and each proxy
    check them); the Deployment's securityContext; no client port; a NetworkPolicy that lets the Ray pods reach
    each other, the operator the dashboard, and the ingress Serve's HTTP port only."""
    cluster = load("rayservice.yaml")["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"
    policy = load("networkpolicy-ray.yaml")["spec"]
    secret = load("secret.example.yaml")["metadata"]["name"]
    for pod in _ray_pods():
        assert pod["metadata"]["labels"].items() >= policy["podSelector"]["matchLabels"].items()
        assert pod["spec"]["securityContext"]["runAsNonRoot"]
        (container,) = pod["spec"]["containers"]
        keys = next(e for e in container["env"] if e["name"] == "BYOL_API_KEYS")["valueFrom"]["secretKeyRef"]
        assert keys["name"] == secret and not keys.get("optional")
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
        assert security["readOnlyRootFilesystem"] and "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
        assert 10001 not in {p["containerPort"] for p in container["ports"]}  # Ray Client: not offered
        assert not container.get("image", "").endswith(":latest")
    workers = _ray_pods()[1:]
    assert all(pod["spec"]["automountServiceAccountToken"] is False for pod in workers)
    assert policy["policyTypes"] == ["Ingress"]
    outside = [rule for rule in policy["ingress"] if "podSelector" not in rule["from"][0]]
    assert sorted(p["port"] for rule in outside for p in rule["ports"]) == [8000, 8265]


def test_the_deployment_fails_closed_and_pins_what_it_runs():
    pod = load("deployment.yaml")["spec"]["template"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    policy = load("networkpolicy.yaml")["spec"]
    assert pod["metadata"]["labels"].items() >= policy["podSelector"]["matchLabels"].items()
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == ["http"]
    unpinned = [str(p.relative_to(K8S.parent)) for p in [*K8S.parent.rglob("*.yaml"), *K8S.parent.rglob("Dockerfile*")]
                if ":latest" in p.read_text()]
    assert not unpinned, unpinned


def test_every_cache_is_on_a_writable_volume():
    """With readOnlyRootFilesystem, a cache under the home folder fails at start-up (a remote BYOL_INDEX is copied
    to local disk first): the image puts the Hub's and this project's caches on /cache, a volume in every pod."""
    env = dockerfile_env()
    (container,) = load("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    for variable in ("HF_HOME", "BYOL_CACHE"):
        assert any(env[variable] == path or env[variable].startswith(path + "/") for path in writable), variable
    assert "BYOL_CACHE=/cache/byol" in RAY_DOCKERFILE


def test_hub_models_in_the_manifests_are_pinned_to_a_revision():
    """A Hub repo id without a revision follows a moving branch: a rolling restart could serve other weights."""
    app = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])["applications"][0]
    env = app["runtime_env"]["env_vars"]
    assert "/" in env["BYOL_MODEL"] and not env["BYOL_MODEL"].startswith("/")  # a Hub id here
    assert env.get("BYOL_REVISION") not in (None, "", "main")
    data = load("configmap.yaml")["data"]
    assert data["BYOL_MODEL"].startswith("/") or data.get("BYOL_REVISION") not in (None, "", "main")
