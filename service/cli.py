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
    uvicorn.run(app, host=host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=30,
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
