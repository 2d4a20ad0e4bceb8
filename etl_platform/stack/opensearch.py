"""OpenSearch stand-in: a single OpenSearch 2.19 node embedded in a small Java main.

No tarball can be fetched here, so `services/opensearch` builds the node from Maven Central: the
server jar plus the distribution's modules (netty4 transport, analysis-common, mapper-extras,
reindex, painless) handed to `Node` as classpath plugins. `mvn package` builds a small jar and writes
the dependency classpath to `target/classpath.txt`; the jars stay in the local Maven repository.
No security plugin: plain HTTP on 127.0.0.1, cluster `etl-local`, replicas default to 0 so indices
go green. Later starts map the classes from a class-data-sharing archive the first start wrote.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.request
from pathlib import Path

from etl_platform.config import local_port
from etl_platform.stack.service import REPO_ROOT, LocalService, maven_package

SERVICE_SRC = REPO_ROOT / "services" / "opensearch"
POM = SERVICE_SRC / "pom.xml"
TARGET = SERVICE_SRC / "target"
NODE_JAR = TARGET / "opensearch-local-node.jar"
CLASSPATH_FILE = TARGET / "classpath.txt"
BUILD_STAMP = TARGET / ".build-stamp"
MAIN_CLASS = "local.opensearch.LocalNode"
CLUSTER_NAME = "etl-local"

# The distribution's system JVM options that matter for an embedded node on Java 17 (no security
# manager is installed, so no -Djava.security.manager=allow and no --add-opens are needed).
JVM_FLAGS = [
    "-Xms512m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:-OmitStackTraceInFastThrow",
    "-XX:+ShowCodeDetailsInExceptionMessages",
    "-Xss1m",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
    "-Djna.nosys=true",
    # OpenSearch's date parsing expects the COMPAT locale data on Java 9+.
    "-Djava.locale.providers=SPI,COMPAT",
    "-Dio.netty.noUnsafe=true",
    "-Dio.netty.noKeySetOptimization=true",
    "-Dio.netty.recycler.maxCapacityPerThread=0",
    "-Dio.netty.allocator.numDirectArenas=0",
    # The node's own shutdown hook closes it and then shuts Log4j down; Log4j's hook would race it.
    "-Dlog4j.shutdownHookEnabled=false",
    "-Dlog4j2.disable.jmx=true",
]

# A dynamic CDS archive starts with this magic; the JVM writes the header last, so an archive cut
# short (node killed while it was being written) does not have it.
_CDS_MAGIC = (0xF00BABA8).to_bytes(4, "little")


def _complete_archive(path: Path) -> bool:
    try:
        with open(path, "rb") as archive:
            return archive.read(4) == _CDS_MAGIC
    except OSError:
        return False


class OpenSearchService(LocalService):
    name = "opensearch"
    start_timeout_s = 120.0
    stop_timeout_s = 60.0  # the first stop writes the class-data-sharing archive (~85 MB)

    @property
    def port(self) -> int:
        return local_port("opensearch")

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    # --- build --------------------------------------------------------------------------------
    def _build_current(self) -> bool:
        """True when target/ was built after the last change to the pom or the sources."""
        if not (BUILD_STAMP.exists() and CLASSPATH_FILE.exists()):
            return False
        if not NODE_JAR.exists():
            return False
        built = BUILD_STAMP.stat().st_mtime
        sources = [POM, *(p for p in (SERVICE_SRC / "src").rglob("*") if p.is_file())]
        if any(p.stat().st_mtime > built for p in sources):
            return False
        # A fresh ~/.m2 (new machine, cleaned cache) with an old target/: resolve again.
        return all(Path(jar).exists() for jar in self._dependency_classpath())

    def _dependency_classpath(self) -> list[str]:
        return [p for p in CLASSPATH_FILE.read_text().strip().split(os.pathsep) if p]

    def install(self) -> None:
        if not self._build_current():
            maven_package(POM, "OpenSearch", self._java(), BUILD_STAMP)

    # --- run ----------------------------------------------------------------------------------
    def _java(self) -> str:
        return os.environ.get("ETL_OPENSEARCH_JAVA", "java")

    def _cds_flags(self, classpath: str) -> list[str]:
        """Application class-data sharing: the first start records the loaded classes, later ones map them.

        Starts about twice as fast. The JVM writes the archive (~75 MB) when the node exits. It is only
        valid for this exact classpath, jars included (a rebuilt node jar invalidates it), hence the key.
        ETL_OPENSEARCH_CDS=0 turns it off.
        """
        if os.environ.get("ETL_OPENSEARCH_CDS", "1") == "0":
            return []
        jar = NODE_JAR.stat()
        key = f"{classpath} {jar.st_size} {jar.st_mtime_ns} {' '.join(JVM_FLAGS)}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        archive = self.dir / f"classes-{digest}.jsa"
        if _complete_archive(archive):
            return [f"-XX:SharedArchiveFile={archive}", "-Xshare:auto", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
        for stale in self.dir.glob("classes-*.jsa"):
            stale.unlink(missing_ok=True)
        return [f"-XX:ArchiveClassesAtExit={archive}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]

    def command(self) -> list[str]:
        classpath = os.pathsep.join([str(NODE_JAR), *self._dependency_classpath()])
        return [
            self._java(),
            *JVM_FLAGS,
            *self._cds_flags(classpath),
            "-cp",
            classpath,
            MAIN_CLASS,
            str(self.data_dir),
            str(self.port),
        ]

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float = 1.0) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.endpoint()}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        # No proxy: an http_proxy in the environment must not see (or swallow) loopback calls.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=timeout) as response:
            return json.load(response)

    def healthy(self) -> bool:
        try:
            health = self._request("GET", "/_cluster/health")
        except (OSError, ValueError, http.client.HTTPException):
            return False
        return health.get("cluster_name") == CLUSTER_NAME and health.get("status") in ("green", "yellow")

    def after_start(self) -> None:
        # The node sets this itself right after it starts; repeat it so start() never returns before
        # it holds (a new index would get a replica that one node can never assign: yellow).
        self._request(
            "PUT", "/_cluster/settings", {"persistent": {"cluster.default_number_of_replicas": 0}}, timeout=10
        )

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"
