"""Kinesis Data Streams stand-in: kinesis-mock from the npm package `kinesis-local`.

Chosen over moto because it reshards like Kinesis: after a split or merge new writes go to the
children and reading a closed parent ends with ChildShards (docs/architecture.md, "The local stack").
It binds 0.0.0.0 and has no host option, so `services/kinesis/loopback.js` is preloaded to pin every
listen() to 127.0.0.1.
"""

from __future__ import annotations

import shutil
import subprocess

from etl_platform.config import local_port
from etl_platform.stack.service import REPO_ROOT, LocalService, StackError, port_open

SERVICE_SRC = REPO_ROOT / "services" / "kinesis"
PACKAGE_DIR = SERVICE_SRC / "node_modules" / "kinesis-local"


class KinesisService(LocalService):
    name = "kinesis"
    start_timeout_s = 60.0

    @property
    def port(self) -> int:
        return local_port("kinesis")

    def install(self) -> None:
        if (PACKAGE_DIR / "main.js").exists():
            return
        if shutil.which("npm") is None:
            raise StackError("npm is not installed; run `make install` (scripts/install.sh installs Node.js)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=SERVICE_SRC, check=True)

    def command(self) -> list[str]:
        return ["node", "-r", str(SERVICE_SRC / "loopback.js"), str(PACKAGE_DIR / "main.js")]

    def environment(self) -> dict[str, str]:
        instant = {
            f"{op}_DURATION": "0ms"
            for op in (
                "CREATE_STREAM",
                "DELETE_STREAM",
                "MERGE_SHARDS",
                "SPLIT_SHARD",
                "UPDATE_SHARD_COUNT",
                "START_STREAM_ENCRYPTION",
                "STOP_STREAM_ENCRYPTION",
                "UPDATE_STREAM_MODE",
                "REGISTER_STREAM_CONSUMER",
                "DEREGISTER_STREAM_CONSUMER",
            )
        }
        return {
            **instant,
            "KINESIS_MOCK_PLAIN_PORT": str(self.port),
            # The TLS listener cannot be switched off; give it the neighbouring port on loopback.
            "KINESIS_MOCK_TLS_PORT": str(self.port - 1),
            "KINESIS_MOCK_CERT_PATH": str(PACKAGE_DIR / "server.json"),
            "KINESIS_MOCK_HOST": "127.0.0.1",
            "SHARD_LIMIT": "64",
            "LOG_LEVEL": "WARN",
            # No persistence: moto keeps the lake (and so the consumer's checkpoints) in memory only, so
            # a restarted stack starts from an empty stream too; a persisted stream full of demo records
            # also makes kinesis-mock's start take minutes.
            "SHOULD_PERSIST_DATA": "false",
        }

    def healthy(self) -> bool:
        return port_open("127.0.0.1", self.port)

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"
