"""The app on Ray Serve, on a real two-node Ray cluster made on this machine (two nodes of 1 CPU, loopback)."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.support import REPO
from tests.support.server import free_port

pytest.importorskip("ray.serve")

pytestmark = pytest.mark.slow


def _replica(response: httpx.Response) -> dict[str, str]:
    return dict(part.strip().split("=", 1) for part in response.headers["x-byol-replica"].split(";"))


def _jpeg(photo_bytes, i: int):
    return [("images", (f"p{i}.jpg", photo_bytes[i % len(photo_bytes)], "image/jpeg"))]


def _wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout_s: float) -> None:
    """Until ``text`` is in the process's log; fails at once if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"exited {proc.returncode} before saying {text!r}:\n" + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in {timeout_s:g} s:\n" + log.read_text()[-3000:]
        time.sleep(0.2)


def test_byol_serve_engine_ray_serves_and_stops_cleanly_on_sigterm(trained_model, onnx_client, photo_bytes,
                                                                    tmp_path):
    """`byol-serve --engine ray`: starts a local Ray and Serve, serves the app, and on SIGTERM deletes the
    application, shuts Ray down and exits 0 with no process left behind."""
    import signal
    import sys

    import psutil

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.server.cli", "--engine", "ray", "--model", str(trained_model),
                                 "--port", str(port), "--replicas", "1", "--replica-cpus", "1", "--max-wait-ms", "2"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    tree: list = []
    try:
        url = f"http://127.0.0.1:{port}"
        # the server's own readiness signal (printed once its proxy answers /ready), however long a loaded
        # machine takes to start Ray; the bound only stops a hung start from hanging the suite
        _wait_for_line(proc, log, "RUNNING with 1 replica(s)", timeout_s=480)
        r = httpx.post(f"{url}/embed?layers=avgpool", files=_jpeg(photo_bytes, 0), timeout=60)
        assert r.status_code == 200 and _replica(r)["node"], r.text
        ref = onnx_client.post("/embed?layers=avgpool", files=_jpeg(photo_bytes, 0)).json()
        got = np.array(r.json()["data"][0]["embeddings"]["avgpool"], np.float32)
        assert np.abs(got - np.array(ref["data"][0]["embeddings"]["avgpool"], np.float32)).max() <= 1e-5
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert tree  # Ray's processes
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, [p.info if hasattr(p, "info") else p for p in alive]
    finally:
        for p in [proc, *tree]:
            try:
                p.kill()
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        proc.wait(timeout=30)


SERVE_YAML = REPO / "docker" / "ray" / "serve.yaml"


def _test_config(model: Path, port: int, index: Path, *, allow_no_auth: bool = True) -> dict:
    """docker/ray/serve.yaml with what this machine needs: the test model, a free port, two fixed replicas of one
    CPU (the nodes have one each), an embedding folder checked often, and (unless told otherwise) no API keys
    allowed: the nodes of this cluster have none in their environment, and these tests are not about keys.
    Everything else (import path, options, settings) is the file's."""
    config = yaml.safe_load(SERVE_YAML.read_text())
    config["http_options"]["port"] = port
    (application,) = config["applications"]
    env = application["runtime_env"]["env_vars"]
    assert "BYOL_API_KEYS" not in env  # keys come from the nodes' environment, never from the file
    env.update({"BYOL_MODEL": str(model), "BYOL_MAX_WAIT_MS": "2", "BYOL_INDEX": str(index),
                "BYOL_INDEX_POLL_S": "0.3"})
    if allow_no_auth:
        env["BYOL_ALLOW_NO_AUTH"] = "true"
    application["runtime_env"]["env_vars"].pop("HF_HOME")
    (deployment,) = application["deployments"]
    deployment.pop("autoscaling_config")
    deployment.update({"num_replicas": 2, "ray_actor_options": {"num_cpus": 1}})
    assert deployment["max_replicas_per_node"] == 1 and config["proxy_location"] == "EveryNode"
    return config


def _healthy(proxy_status) -> bool:
    return getattr(proxy_status, "value", proxy_status) == "HEALTHY"


def _embed(model: Path, data: Path, out: Path) -> None:
    from service.embed.cli import main

    assert main(["run", "--model", str(model), "--input", str(data), "--output", str(out), "--no-progress"]) == 0


@pytest.fixture(scope="module")
def serve_port() -> int:
    """The port of this module's Serve proxies: one for every deployment here, so that Serve, once started on the
    cluster, is reused (its HTTP options cannot change while it runs)."""
    return free_port()


def test_the_shipped_config_without_keys_does_not_come_up_and_says_why(ray_cluster, trained_model, tmp_path,
                                                                       serve_port):
    """docker/ray/serve.yaml deployed as shipped on nodes without BYOL_API_KEYS: the replicas refuse to start (its
    proxies listen on 0.0.0.0), and Serve's status says why. Before: the app served every route to anyone."""
    import ray
    from ray import serve

    from service.ray_serve import APP_NAME, DEPLOYMENT_NAME

    folder = tmp_path / "emb"
    folder.mkdir()
    config = tmp_path / "serve.yaml"
    shipped = _test_config(trained_model, serve_port, folder, allow_no_auth=False)
    shipped["applications"][0]["deployments"][0]["num_replicas"] = 1  # Serve gives up after 3 constructor failures
    config.write_text(yaml.safe_dump(shipped))
    deploy = subprocess.run(["serve", "run", "--non-blocking", "--address", ray_cluster.address, str(config)],
                            capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    ray.init(address=ray_cluster.address, log_to_driver=False, configure_logging=False)
    try:
        deadline = time.monotonic() + 180
        message = ""
        while "refusing to start" not in message:  # Serve reports the constructor's error from its first failure
            app = serve.status().applications.get(APP_NAME)
            deployment = app.deployments.get(DEPLOYMENT_NAME) if app is not None else None
            message = deployment.message if deployment is not None else ""
            assert app is None or app.status != "RUNNING", "the app came up without keys"
            assert time.monotonic() < deadline, app
            time.sleep(0.25)
        assert app.status in ("DEPLOYING", "DEPLOY_FAILED"), app
        assert "refusing to start: no API keys" in message and "BYOL_ALLOW_NO_AUTH" in message, message
    finally:
        try:
            serve.delete(APP_NAME)  # Serve itself stays up for the module's other deployment
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def serve_cluster(ray_cluster, trained_model, photos, tmp_path_factory, serve_port):
    """The session's two-node cluster with the app deployed by Serve's own CLI from docker/ray/serve.yaml, serving
    an index; the application is deleted at the end of the module (the cluster stays for the session)."""
    import ray
    from ray import serve

    from service.embed.cli import main as embed_main
    from service.ray_serve import APP_NAME
    from tests.support.images import write_images

    root = logging.getLogger()
    before = list(root.handlers)
    port = serve_port
    folder = tmp_path_factory.mktemp("ray")
    write_images(folder / "data", photos[:3], copies=2)
    _embed(trained_model, folder / "data", folder / "emb")
    assert embed_main(["index", str(folder / "emb")]) == 0
    config = folder / "serve.yaml"
    config.write_text(yaml.safe_dump(_test_config(trained_model, port, folder / "emb")))
    deploy = subprocess.run(["serve", "run", "--non-blocking", "--address", ray_cluster.address, str(config)],
                            capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    ray.init(address=ray_cluster.address, log_to_driver=False, configure_logging=False)
    try:
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        # Serve's own signals: the application RUNNING and a HEALTHY proxy on every node (a proxy starts once
        # the controller has seen its node, which can be after the application runs)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = serve.status()
            app = status.applications.get(APP_NAME)
            if app is not None and app.status == "DEPLOY_FAILED":
                break
            if app is not None and app.status == "RUNNING" and len(status.proxies) == len(nodes) and all(
                    _healthy(p) for p in status.proxies.values()):
                break
            time.sleep(1)
        assert app is not None and app.status == "RUNNING", app
        assert len(status.proxies) == len(nodes) and all(_healthy(p) for p in status.proxies.values()), \
            status.proxies
        yield {"url": f"http://127.0.0.1:{port}", "nodes": nodes, "folder": folder,
               "urls": [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ray_cluster.worker_proxy_port}"]}
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            # Serve's client configures the root logger of the process it runs in (a handler on this test's
            # captured stderr): the tests after this module must not write to it
            for handler in [h for h in root.handlers if h not in before and type(h) is logging.StreamHandler]:
                root.removeHandler(handler)


def test_two_replicas_on_two_nodes_serve_the_single_process_vectors(serve_cluster, onnx_client, photo_bytes):
    """What the deployment promises: two replicas on two nodes, each answering, with the single-process vectors.
    Requests go to both nodes' proxies, 8 at a time, until both replicas have answered (at least 40 requests,
    at most 160): which replica a proxy picks is Serve's choice, not a promise this test leans on."""
    from concurrent.futures import ThreadPoolExecutor

    urls = serve_cluster["urls"]

    def call(i: int) -> httpx.Response:
        return httpx.post(f"{urls[i % len(urls)]}/embed?layers=feature3,avgpool", files=_jpeg(photo_bytes, i),
                          timeout=60)

    responses: list[httpx.Response] = []
    with ThreadPoolExecutor(8) as pool:
        while len(responses) < 160:
            responses += pool.map(call, range(len(responses), len(responses) + 8))
            answered = {_replica(r)["replica"] for r in responses if r.status_code == 200}
            if len(responses) >= 40 and len(answered) == 2:
                break
    assert [r.status_code for r in responses] == [200] * len(responses)
    served_by = [_replica(r) for r in responses]
    assert len(serve_cluster["nodes"]) == 2
    assert {s["node"] for s in served_by} == serve_cluster["nodes"], (len(responses), served_by[:8])
    assert len({s["replica"] for s in served_by}) == 2
    by_replica = {s["replica"]: i for i, s in reversed(list(enumerate(served_by)))}  # each replica's first answer
    for i in sorted({*range(len(photo_bytes)), *by_replica.values()}):
        ref = onnx_client.post("/embed?layers=feature3,avgpool", files=_jpeg(photo_bytes, i)).json()
        for layer in ("feature3", "avgpool"):
            got = np.array(responses[i].json()["data"][0]["embeddings"][layer], np.float32)
            want = np.array(ref["data"][0]["embeddings"][layer], np.float32)
            assert np.abs(got - want).max() <= 1e-5, (layer, served_by[i])
    assert all(r.headers["x-request-id"].count(",") == 0 for r in responses)  # one id, not the proxy's and ours


def test_every_replica_switches_to_a_new_generation_on_its_own(serve_cluster, trained_model, photos):
    folder = serve_cluster["folder"]
    photos[4].resize((96, 72)).save(folder / "data" / "arrival.jpg")
    _embed(trained_model, folder / "data", folder / "emb")  # generation 2; the index follows
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while len(seen) < 2 or set(seen.values()) != {2}:
        assert time.monotonic() < deadline, seen
        for url in serve_cluster["urls"]:
            r = httpx.get(f"{url}/info", timeout=30)
            seen[_replica(r)["replica"]] = r.json()["search"]["generation"]
        time.sleep(0.2)
    for url in serve_cluster["urls"]:
        found = httpx.post(f"{url}/search", json={"id": "arrival.jpg", "k": 1}, timeout=30)
        assert found.status_code == 200 and found.json()["generation"] == 2


def test_metrics_say_they_are_one_replicas_view_and_probes_pass(serve_cluster):
    from ray import serve

    from service.ray_serve import APP_NAME, DEPLOYMENT_NAME

    url = serve_cluster["url"]
    metrics = httpx.get(f"{url}/metrics", timeout=30)
    assert metrics.status_code == 200 and metrics.headers["x-byol-metrics-scope"] == "replica"
    first = metrics.text.splitlines()[0]
    assert first.startswith("# byol: the view of ONE replica (replica=") and "ray_serve_" in first
    assert "byol_requests_total" in metrics.text
    assert httpx.get(f"{url}/ready", timeout=30).status_code == 200
    assert httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"].keys() >= {"/embed", "/v1/embeddings"}
    status = serve.status().applications[APP_NAME]
    assert status.status == "RUNNING"
    assert status.deployments[DEPLOYMENT_NAME].replica_states == {"RUNNING": 2}


def test_killing_a_replica_under_load_answers_200_or_a_clean_503_and_serve_replaces_it(serve_cluster, photo_bytes):
    import ray
    from ray import serve

    from service.ray_serve import APP_NAME, DEPLOYMENT_NAME

    url = serve_cluster["url"]
    statuses: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        i = k
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    # four images a request, six clients: both replicas are busy all the time, so the kill
                    # lands on requests in flight
                    files = [f for j in range(4) for f in _jpeg(photo_bytes, i + j)]
                    r = http.post(f"{url}/embed?layers=avgpool", files=files)
                    statuses.append(r.status_code)
                    if r.status_code == 503:
                        assert r.headers.get("retry-after"), r.headers
                    elif r.status_code != 200:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                except Exception as err:  # a dropped connection or a read timeout
                    failures.append(repr(err))
                i += 4

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        before = len(statuses)
        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#{DEPLOYMENT_NAME}#")]
        assert len(replicas) == 2, replicas
        victim = replicas[0]["name"].rsplit("#", 1)[1]
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
        time.sleep(6)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
    assert before > 0 and len(statuses) > before  # there was load before and after the kill
    assert not failures, failures[:5]
    assert statuses.count(200) > len(statuses) // 2

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = serve.status().applications[APP_NAME]
        states = status.deployments[DEPLOYMENT_NAME].replica_states
        if status.status == "RUNNING" and states == {"RUNNING": 2}:
            break
        time.sleep(1)
    assert status.status == "RUNNING" and states == {"RUNNING": 2}, (status.status, states)
    # the new replica takes traffic (asked through both nodes' proxies, which may take a moment to learn about
    # it), and the killed one never answers again
    seen: set[str] = set()
    urls = serve_cluster["urls"]
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        seen |= {_replica(httpx.post(f"{urls[i % 2]}/embed?layers=avgpool", files=_jpeg(photo_bytes, i),
                                     timeout=60))["replica"] for i in range(8)}
    assert victim not in seen and len(seen) == 2, (victim, seen)


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "0"], "--replicas must be >= 1"),
    (["--autoscale", "4"], "--autoscale takes MIN:MAX"),
    (["--autoscale", "3:1"], "0 <= MIN <= MAX"),
    (["--replicas", "2", "--autoscale", "1:2"], "not both"),
    (["--replica-cpus", "0"], "--replica-cpus must be > 0"),
    (["--max-replicas-per-node", "0"], "--max-replicas-per-node must be >= 1"),
])
def test_bad_engine_options_are_refused_before_ray_starts(argv, message, capsys, monkeypatch):
    import ray

    from service.server.cli import main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for options that are refused")

    monkeypatch.setattr(ray, "init", no_ray)
    assert main(["--engine", "ray", "--model", "unused", *argv]) == 2
    assert message in capsys.readouterr().err


def test_deployment_options_from_the_flags():
    from service.ray_serve import deployment_options

    assert deployment_options(autoscale=(1, 4), replica_cpus=2, max_replicas_per_node=1, drain_timeout_s=25) == {
        "num_replicas": "auto", "ray_actor_options": {"num_cpus": 2}, "max_replicas_per_node": 1,
        "graceful_shutdown_timeout_s": 25,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}}
    assert deployment_options(replicas=3) == {"num_replicas": 3}
