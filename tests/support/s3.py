"""A real S3 endpoint on loopback (moto's server mode), as the tests reach it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

S3_ENV = {"AWS_ACCESS_KEY_ID": "byol-test-access-key", "AWS_SECRET_ACCESS_KEY": "byol-test-secret-0123456789",
          "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3:
    """A running S3 endpoint: its URL, an s3fs client without caches, and the CLI option that reaches it."""

    endpoint: str
    fs: object

    @property
    def option(self) -> list[str]:
        return ["--storage-option", f"endpoint_url={self.endpoint}"]

    @property
    def options(self) -> dict:
        return {"endpoint_url": self.endpoint}

    def env(self) -> dict:
        """Environment for a child process: the credentials, nothing else of this shell's AWS settings."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **S3_ENV}

    def upload_tree(self, local: Path, prefix: str) -> None:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.fs.pipe_file(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
