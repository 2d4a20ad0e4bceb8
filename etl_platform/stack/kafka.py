"""Amazon MSK stand-in: a single Apache Kafka broker in KRaft mode (broker and controller in one process).

No tarball can be fetched here, so `services/kafka` resolves the broker (`org.apache.kafka:kafka_2.13`)
from Maven Central: `mvn package` compiles nothing and writes the runtime classpath to
`target/classpath.txt`; the jars stay in the local Maven repository. Plaintext on 127.0.0.1 only: the
client listener on ETL_KAFKA_PORT (9092), the controller's on the next port. Like the Kinesis
emulator (and moto, which holds the leases and checkpoints), it keeps nothing across restarts: every
start formats a fresh log directory, so a restarted stack starts from empty topics and no offsets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from etl_platform.config import local_port
from etl_platform.stack.service import REPO_ROOT, LocalService, StackError, maven_package, port_open

SERVICE_SRC = REPO_ROOT / "services" / "kafka"
POM = SERVICE_SRC / "pom.xml"
LOG4J_CONFIG = SERVICE_SRC / "log4j2.properties"
TARGET = SERVICE_SRC / "target"
CLASSPATH_FILE = TARGET / "classpath.txt"
BUILD_STAMP = TARGET / ".build-stamp"
# A cluster id is a UUID in base64url; fixed (uuid5 of "etl-platform.local.kafka"), as no data is kept.
CLUSTER_ID = "sDCE5lHKV7mra9fXIketGA"
JVM_FLAGS = ["-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8"]


class KafkaService(LocalService):
    name = "kafka"
    start_timeout_s = 90.0
    stop_timeout_s = 30.0

    @property
    def port(self) -> int:
        return local_port("kafka")

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def config_path(self) -> Path:
        return self.dir / "server.properties"

    # --- build --------------------------------------------------------------------------------
    def _classpath(self) -> str:
        return CLASSPATH_FILE.read_text().strip()

    def _build_current(self) -> bool:
        if not (BUILD_STAMP.exists() and CLASSPATH_FILE.exists()):
            return False
        if POM.stat().st_mtime > BUILD_STAMP.stat().st_mtime:
            return False
        # A fresh ~/.m2 (new machine, cleaned cache) with an old target/: resolve again.
        return all(Path(jar).exists() for jar in self._classpath().split(os.pathsep) if jar)

    def install(self) -> None:
        if not self._build_current():
            maven_package(POM, "the Kafka broker", self._java(), BUILD_STAMP)

    # --- run ----------------------------------------------------------------------------------
    def _java(self) -> str:
        return os.environ.get("ETL_KAFKA_JAVA", "java")

    def _java_command(self, main: str, *args: str) -> list[str]:
        return [
            self._java(),
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            self._classpath(),
            main,
            *args,
        ]

    def _write_config(self) -> None:
        host = "127.0.0.1"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{host}:{self.port},CONTROLLER://{host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One broker: every internal topic has one replica; producers' idempotence still holds.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created by `stack up` (every Kafka pipeline's) or on purpose, never by a typo.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
        }
        self.config_path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))

    def command(self) -> list[str]:
        # Runs just before the broker starts: a fresh, formatted log directory (nothing is kept).
        self._write_config()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        result = subprocess.run(
            self._java_command(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "--cluster-id",
                CLUSTER_ID,
                "--config",
                str(self.config_path),
            ),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        if result.returncode != 0:
            raise StackError(f"formatting the Kafka log directory failed:\n{(result.stdout + result.stderr)[-2000:]}")
        return self._java_command("kafka.Kafka", str(self.config_path))

    def healthy(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            metadata = AdminClient({"bootstrap.servers": self.bootstrap(), "socket.timeout.ms": 1000}).list_topics(
                timeout=2
            )
        except Exception:  # KafkaException while the broker is still starting
            return False
        return bool(metadata.brokers)

    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def endpoint(self) -> str:
        return self.bootstrap()
