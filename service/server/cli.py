"""``byol-serve``: run the embedding server. Every option also reads ``BYOL_<NAME>`` from the environment.

    byol-serve --model org/byol-r50-ep200 --backend onnx --port 8000
    curl -F images=@cat.jpg "localhost:8000/embed?layers=feature5,avgpool&normalize=true"
    byol-serve --engine ray --replicas 2 --max-replicas-per-node 1      # the same app on Ray Serve
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from service.runtime.settings import add_settings_options, settings_overrides
from service.server.app import create_app
from service.server.settings import ServiceSettings
from storage.location import add_storage_option


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_storage_option(parser, "an --index on object storage (and its images)")
    parser.set_defaults(storage_options=None)  # unset: BYOL_STORAGE_OPTIONS or the default
    add_settings_options(parser, ServiceSettings, skip=("storage_options",), many=("api_keys", "cors_origins"))
    ray = parser.add_argument_group(
        "engine", "where the app runs: one uvicorn process (default), or Ray Serve replicas (pip install "
        "'byol[ray-serve]'; each replica loads the model once and batches on its own)")
    ray.add_argument("--engine", choices=("uvicorn", "ray"), default="uvicorn",
                     help="uvicorn: this process serves; ray: deploy the app on Ray Serve and keep it up until "
                          "SIGTERM/Ctrl-C (then the application is deleted, replicas finish their requests)")
    ray.add_argument("--replicas", type=int, default=None, help="ray: a fixed number of replicas (default 1)")
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                     help="ray: autoscale between MIN and MAX replicas on ongoing requests (8 per replica)")
    ray.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                     help="ray: join this cluster (auto: the one on this machine); default: start a local Ray")
    ray.add_argument("--replica-cpus", type=float, default=None,
                     help="ray: CPUs per replica (Ray's num_cpus; also the replica's inference threads when "
                          "--threads is 0; default 1)")
    ray.add_argument("--max-replicas-per-node", type=int, default=None,
                     help="ray: at most this many replicas on one node, so that replicas spread over nodes "
                          "(1: one per node; default: no limit, Ray places them)")
    ray.add_argument("--proxy-location", choices=("EveryNode", "HeadOnly"), default="EveryNode",
                     help="ray: Serve's HTTP proxies on every node (put the load balancer in front of all of them) "
                          "or on the head node only (default EveryNode)")
    return parser


def _autoscale(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"--autoscale takes MIN:MAX (e.g. 1:4), got {text!r}")
    return int(low), int(high)


READY_WAIT_S = 120.0


def _wait_until_ready(host: str, port: int, stop, timeout_s: float = READY_WAIT_S) -> bool:
    """Poll ``/ready`` through this node's proxy until it answers 200 (True), a signal arrives or ``timeout_s``
    passes (False)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    url = f"http://[{target}]:{port}/ready" if ":" in target else f"http://{target}:{port}/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        stop.wait(0.5)
    return False


def _run_ray(settings, args) -> int:
    """``--engine ray``: deploy on Ray Serve, wait for SIGTERM / Ctrl-C, delete the application, stop what we
    started."""
    from service.ray_serve import APP_NAME, PROXY_CALLBACK, PROXY_CALLBACK_ENV, build, deployment_options

    try:
        options = deployment_options(replicas=args.replicas, autoscale=_autoscale(args.autoscale),
                                     replica_cpus=args.replica_cpus, max_replicas_per_node=args.max_replicas_per_node,
                                     drain_timeout_s=settings.drain_timeout_s)
    except ValueError as err:
        print(f"byol-serve: {err}", file=sys.stderr)
        return 2
    logger = logging.getLogger("service")
    # the proxies' middleware that replays requests a dying replica lost: the Ray processes started here inherit
    # it; a cluster started elsewhere needs it in its nodes' environment (README, docker/k8s/rayservice.yaml)
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    import ray
    from ray import serve

    if args.ray_address:
        logger.info("joining the Ray cluster at %s; the proxies replay lost requests only if its nodes were started "
                    "with %s=%s", args.ray_address, PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    # no --ray-address: a Ray of its own, as the help says (address None would join any cluster this machine runs)
    ray.init(address=args.ray_address or "local", include_dashboard=False if not args.ray_address else None)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port}, proxy_location=args.proxy_location)
        # the replicas refuse to start without keys unless told otherwise; main() already checked this host
        replica_settings = {**settings.portable(), "allow_no_auth": settings.allow_no_auth or not settings.api_keys}
        serve.run(build(replica_settings, **options), name=APP_NAME, route_prefix="/")
        # the line below is the readiness signal scripts and tests wait for: print it once this node's proxy
        # answers /ready, not merely once the replicas run
        if not _wait_until_ready(settings.host, settings.port, stop):
            logger.warning("this node's Serve proxy did not answer /ready on port %d within %g s; it may still come "
                           "up", settings.port, READY_WAIT_S)
        status = serve.status().applications[APP_NAME]
        replicas = sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())
        print(f"byol-serve: Ray Serve application {APP_NAME!r} {status.status} with {replicas} replica(s) on "
              f"http://{settings.host}:{settings.port} (model {settings.model}); Ctrl-C or SIGTERM stops it",
              flush=True)
        while not stop.wait(1.0):
            pass
        logger.info("stopping: deleting the application (replicas finish their requests, at most %g s)",
                    settings.drain_timeout_s)
        serve.delete(APP_NAME)
    finally:
        if not args.ray_address:
            serve.shutdown()
        ray.shutdown()
    return 0


def _draining_server(config, state, timeout: float):
    """uvicorn's server with a drain in front of its shutdown: the first SIGTERM / Ctrl-C marks the service as
    draining (``/ready`` 503, new work 503 + Retry-After, the listener still open so that callers get an answer
    rather than a refused connection); once nothing is in flight or queued, or after ``timeout`` seconds, uvicorn
    shuts down as usual (lifespan: the batcher finishes its queue). The exit status is 0. A second signal is
    uvicorn's own: shut down now."""
    logger = logging.getLogger("service")

    class DrainingServer(uvicorn.Server):
        drain_started: float | None = None

        def handle_exit(self, sig, frame) -> None:
            if self.drain_started is None and state.ready:
                self.drain_started = time.monotonic()
                state.begin_drain()
                logger.info("signal %d: draining (%d requests in flight, %d images queued; at most %g s)", sig,
                            state.in_flight, state.batcher.depth if state.batcher else 0, timeout)
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            should_exit = await super().on_tick(counter)
            if self.drain_started is None or should_exit:
                return should_exit
            waited = time.monotonic() - self.drain_started
            if state.drained or waited > timeout:
                if not state.drained:  # out of time: uvicorn's own grace period is then short too
                    self.config.timeout_graceful_shutdown = 1
                logger.info("drained in %.1f s: %d requests finished while draining%s", waited,
                            state.finished_while_draining,
                            "" if state.drained else f", {state.in_flight} still in flight at the timeout")
                return True
            return False

    return DrainingServer(config)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = settings_overrides(args, ServiceSettings)
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as err:
        print(f"byol-serve: invalid settings: {err}", file=sys.stderr)
        return 2
    if (problem := settings.auth_problem()) is not None:
        print(f"byol-serve: refusing to start: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    if not settings.api_keys:
        logging.getLogger("service").warning(
            "AUTHENTICATION IS OFF: no API keys, every client on %s may call every route%s", settings.host,
            " (--allow-no-auth)" if settings.allow_no_auth else "")
    if args.engine == "ray":
        return _run_ray(settings, args)
    app = create_app(settings)
    host = settings.host
    print(f"byol-serve: starting on http://{host}:{settings.port} (model {settings.model}, backend {settings.backend})\n"
          f"  try: curl -F images=@photo.jpg 'http://{host}:{settings.port}/embed?layers=feature5,avgpool'\n"
          f"       curl http://{host}:{settings.port}/info", flush=True)
    config = uvicorn.Config(app, host=host, port=settings.port, log_level=settings.log_level, access_log=False,
                            http=settings.http, timeout_graceful_shutdown=5)  # after the drain: the last responses go out
    _draining_server(config, app.state.service, settings.drain_timeout_s).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
