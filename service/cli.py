"""``byol-serve``: run the embedding server. Every option also reads ``BYOL_<NAME>`` from the environment.

    byol-serve --model org/byol-r50-ep200 --backend onnx --port 8000
    curl -F images=@cat.jpg "localhost:8000/embed?layers=feature5,avgpool&normalize=true"
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from service.settings import ServiceSettings

    parser = argparse.ArgumentParser(prog="byol-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in ServiceSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"BYOL_{name.upper()}"
        default = field.default if field.default_factory is None else field.default_factory()
        text = f"{field.description} [env {env}; default {default!r}]"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif name in ("api_keys", "cors_origins"):
            parser.add_argument(flag, dest=name, nargs="*", default=None, help=text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=text)
    return parser


def _draining_server(config, state, timeout: float):
    """uvicorn's server with a drain in front of its shutdown: the first SIGTERM / Ctrl-C marks the service as
    draining (``/ready`` 503, new work 503 + Retry-After, the listener still open so that callers get an answer
    rather than a refused connection); once nothing is in flight or queued, or after ``timeout`` seconds, uvicorn
    shuts down as usual (lifespan: the engine finishes its queue). The exit status is 0. A second signal is
    uvicorn's own: shut down now."""
    import time

    import uvicorn

    logger = logging.getLogger("service")

    class DrainingServer(uvicorn.Server):
        drain_started: float | None = None

        def handle_exit(self, sig, frame) -> None:
            if self.drain_started is None and state.ready:
                self.drain_started = time.monotonic()
                state.begin_drain()
                logger.info("signal %d: draining (%d requests in flight, %d images queued; at most %g s)", sig,
                            state.in_flight, state.engine.depth if state.engine else 0, timeout)
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
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import ServiceSettings

    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as err:
        print(f"byol-serve: invalid settings: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    app = create_app(settings)
    host = settings.host
    print(f"byol-serve: starting on http://{host}:{settings.port} (model {settings.model}, backend {settings.backend})\n"
          f"  try: curl -F images=@photo.jpg 'http://{host}:{settings.port}/embed?layers=feature5,avgpool'\n"
          f"       curl http://{host}:{settings.port}/info", flush=True)
    config = uvicorn.Config(app, host=host, port=settings.port, log_level=settings.log_level, access_log=False,
                            timeout_graceful_shutdown=5)  # after the drain: the last responses go out
    _draining_server(config, app.state.service, settings.drain_timeout_s).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
