"""S3, CloudWatch, SNS and KMS stand-in: a moto server on loopback (Kinesis is NOT served from here)."""

from __future__ import annotations

import sys
import urllib.request

from etl_platform.config import local_port
from etl_platform.stack.service import LocalService


class MotoService(LocalService):
    name = "moto"
    start_timeout_s = 60.0

    @property
    def port(self) -> int:
        return local_port("moto")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint()}/moto-api/", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"
