"""The app on Ray Serve, on a real two-node Ray cluster made on this machine (two nodes of 1 CPU, loopback)."""

from __future__ import annotations

import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("ray.serve")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _replica(response: httpx.Response) -> dict[str, str]:
    return dict(part.strip().split("=", 1) for part in response.headers["x-byol-replica"].split(";"))


def _jpeg(photo_bytes, i: int):
    return [("images", (f"p{i}.jpg", photo_bytes[i % len(photo_bytes)], "image/jpeg"))]


@pytest.fixture(scope="module")
def serve_cluster(trained_model):
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from service.ray_serve import APP_NAME, PROXY_CALLBACK, PROXY_CALLBACK_ENV, build

    saved = os.environ.get(PROXY_CALLBACK_ENV)
    os.environ[PROXY_CALLBACK_ENV] = PROXY_CALLBACK  # the nodes' processes inherit it: the proxy's middleware
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        port = _free_port()
        # a proxy on every node, as in production; both bind the same loopback port (Serve sets SO_REUSEPORT), so
        # the kernel spreads new connections over them as a load balancer in front of the nodes would
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="EveryNode")
        serve.run(build({"model": str(trained_model), "max_wait_ms": 2}, num_replicas=2, max_replicas_per_node=1),
                  name=APP_NAME, route_prefix="/")
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        yield {"url": f"http://127.0.0.1:{port}", "nodes": nodes}
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            if saved is None:
                os.environ.pop(PROXY_CALLBACK_ENV, None)
            else:
                os.environ[PROXY_CALLBACK_ENV] = saved


def test_two_replicas_on_two_nodes_serve_the_single_process_vectors(serve_cluster, onnx_client, photo_bytes):
    from concurrent.futures import ThreadPoolExecutor

    url = serve_cluster["url"]

    def call(i: int) -> httpx.Response:
        return httpx.post(f"{url}/embed?layers=feature3,avgpool", files=_jpeg(photo_bytes, i), timeout=60)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(40)))
    assert [r.status_code for r in responses] == [200] * 40
    served_by = [_replica(r) for r in responses]
    assert {s["node"] for s in served_by} == serve_cluster["nodes"] and len(serve_cluster["nodes"]) == 2
    assert len({s["replica"] for s in served_by}) == 2
    for i, r in enumerate(responses[:len(photo_bytes)]):
        ref = onnx_client.post("/embed?layers=feature3,avgpool", files=_jpeg(photo_bytes, i)).json()
        for layer in ("feature3", "avgpool"):
            got = np.array(r.json()["data"][0]["embeddings"][layer], np.float32)
            want = np.array(ref["data"][0]["embeddings"][layer], np.float32)
            assert np.abs(got - want).max() <= 1e-5, layer
    assert all(r.headers["x-request-id"].count(",") == 0 for r in responses)  # one id, not the proxy's and ours


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
    # the new replica takes traffic (each node's proxy prefers its own node's replica, so give the proxies a
    # moment to learn about it), and the killed one never answers again
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        seen |= {_replica(httpx.post(f"{url}/embed?layers=avgpool", files=_jpeg(photo_bytes, i), timeout=60))["replica"]
                 for i in range(8)}
    assert victim not in seen and len(seen) == 2, (victim, seen)
