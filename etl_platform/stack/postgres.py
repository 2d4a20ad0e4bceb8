"""Redshift stand-in: PostgreSQL 15 from Debian's `postgresql` package, initdb'd under .stack/.

PostgreSQL refuses to run as root, so the server runs as the `postgres` system user. If that user
cannot reach the repo's folder (a clone under /root, say), the cluster lives in a private folder
under /var/tmp and .stack/postgres/data links to it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from etl_platform.config import local_port
from etl_platform.stack.service import LocalService, StackError

PG_BIN = Path(os.environ.get("ETL_PG_BIN", "/usr/lib/postgresql/15/bin"))
DATABASE = "warehouse"


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, capture_output=True, text=True, **kwargs)


class PostgresService(LocalService):
    name = "postgres"
    start_timeout_s = 60.0
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for every client to leave

    @property
    def port(self) -> int:
        return local_port("postgres")

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "sockets"

    def _cluster_dir(self) -> Path:
        link = self.data_dir
        if link.is_symlink() or link.exists():
            return link.resolve()
        self.dir.chmod(0o755)
        if os.geteuid() == 0 and _as_postgres(["test", "-x", str(self.dir)]).returncode != 0:
            digest = hashlib.sha1(str(self.dir).encode()).hexdigest()[:12]
            private = Path("/var/tmp") / f"etl-platform-pg-{digest}"
            private.mkdir(parents=True, exist_ok=True)
            link.symlink_to(private)
            return private
        link.mkdir(parents=True, exist_ok=True)
        return link

    def install(self) -> None:
        if not (PG_BIN / "postgres").exists():
            raise StackError(f"{PG_BIN}/postgres not found; run `make install` (installs Debian's postgresql)")
        cluster = self._cluster_dir()
        if os.geteuid() == 0:
            shutil.chown(cluster, "postgres", "postgres")
        if (cluster / "PG_VERSION").exists():
            return
        result = _as_postgres(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(cluster),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
        )
        if result.returncode != 0:
            raise StackError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def command(self) -> list[str]:
        cluster = self._cluster_dir()
        (cluster / "sockets").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(cluster / "sockets", "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return prefix + [
            str(PG_BIN / "postgres"),
            "-D",
            str(cluster),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={cluster / 'sockets'}",
            "-c",
            "fsync=on",
            "-c",
            "max_connections=100",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "max_wal_size=2GB",
        ]

    def healthy(self) -> bool:
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"], capture_output=True
        )
        return result.returncode == 0

    def after_start(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {DATABASE}")

    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def endpoint(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"
