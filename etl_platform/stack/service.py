"""A local server the stack runs: installed, started in its own process group, health-checked, stopped.

Each concrete service (kinesis, moto, postgres, opensearch) subclasses `LocalService` and fills in
`install`, `command`, `healthy` and `endpoint`. State lives under `<repo>/.stack/<name>/` (data, log,
pid file) so a clean clone starts from nothing and `git clean` removes everything.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
    """A local service could not be installed, started or reached."""


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its state; one folder per service."""

    root: Path

    @classmethod
    def default(cls) -> StackPaths:
        return cls(Path(os.environ.get("ETL_STACK_DIR", REPO_ROOT / ".stack")))

    def service_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class LocalService:
    """Base class: process management shared by every local server."""

    name: str = ""
    start_timeout_s: float = 60.0
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 20.0  # then SIGKILL

    def __init__(self, paths: StackPaths | None = None) -> None:
        self.paths = paths or StackPaths.default()

    # --- to implement -------------------------------------------------------------------------
    def install(self) -> None:
        """Make the server's binaries available (idempotent, fast when already done)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    def healthy(self) -> bool:
        raise NotImplementedError

    def endpoint(self) -> str:
        raise NotImplementedError

    def after_start(self) -> None:
        """Create resources the platform expects (buckets, streams, databases); idempotent."""

    # --- shared -------------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.paths.service_dir(self.name)

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / f"{self.name}.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            # Reap it if it is our own exited child (a zombie still answers kill(pid, 0)).
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return None
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start(self) -> None:
        """Start unless already healthy; wait until healthy or fail with the log's tail."""
        if self.healthy():
            self.after_start()
            return
        self.install()
        if self.pid() is None:
            env = {**os.environ, **self.environment()}
            with open(self.log_path, "ab") as log:
                # start_new_session: the server gets its own process group, so stop() can end it
                # and its children, and a Ctrl-C in the terminal does not reach it twice.
                proc = subprocess.Popen(
                    self.command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=self.dir,
                    start_new_session=True,
                )
            self.pid_path.write_text(str(proc.pid))
        self.wait_healthy()
        self.after_start()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if self.pid() is None:
                break
            time.sleep(0.3)
        raise StackError(
            f"{self.name} did not become healthy within {self.start_timeout_s:.0f}s; "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return
        try:
            os.killpg(pid, self.stop_signal)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + self.stop_timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def maven_package(pom: Path, what: str, java: str, stamp: Path) -> None:
    """`mvn package` of a service's pom (the OpenSearch node, the Kafka broker), then `stamp` touched;
    StackError naming `what` when Maven or Java is missing or the build fails (with Maven's last lines)."""
    if shutil.which("mvn") is None:
        raise StackError(f"mvn is not installed; {what} is built from Maven Central with Maven")
    if shutil.which(java) is None:
        raise StackError(f"{java} not found; {what} needs a Java 17 runtime")
    service = pom.parent.relative_to(REPO_ROOT)
    try:
        result = subprocess.run(
            ["mvn", "-B", "-q", "-f", str(pom), "package"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=1200,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"building {service} (mvn package) took over 20 minutes") from exc
    if result.returncode != 0:
        output = _ANSI.sub("", result.stdout + result.stderr).strip().splitlines()
        raise StackError(f"building {service} failed (mvn package):\n" + "\n".join(output[-40:]))
    stamp.touch()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether `url` answers a GET with 200 (a web server that is up, not merely a port taken)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False
