"""`etl-platform doctor`: is this machine ready to run the local stack, and if not, what to do.

Owns the checks: each local port (free, or which of our servers answers on it, or taken by something
else), the tools scripts/install.sh installs and their versions (Python, Java 17 for the OpenSearch
node and the Kafka broker, Maven that builds them, Node.js/npm for kinesis-mock, the PostgreSQL 15
binaries, Chromium for the browser tests), free disk space under the stack's directory and available
memory. Prints a table (OK / WARN / FAIL, and the fix for each problem) or JSON with --json; exit 0
when nothing FAILs, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from etl_platform.config import LOCAL_PORTS, Settings, local_port

OK, WARN, FAIL = "OK", "WARN", "FAIL"
GIB = 1024**3
DISK_WARN_GIB, DISK_FAIL_GIB = 5.0, 1.0
MEMORY_WARN_GIB = 2.0  # the two JVMs, kinesis-mock, moto and PostgreSQL need about this much
INSTALL = "run `make install` (scripts/install.sh)"


@dataclass(frozen=True)
class Check:
    check: str
    status: str
    detail: str
    fix: str = ""


def add_doctor_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `doctor` on the main CLI's sub-parsers; handler: `cmd_doctor`."""
    p = subparsers.add_parser("doctor", help="check ports, tools, disk and memory for the local stack")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=cmd_doctor)
    return p


def _version(command: list[str], pattern: str) -> str | None:
    """The first match of `pattern` in what `command` prints (stdout or stderr), None when it fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(pattern, done.stdout + done.stderr)
    return found.group(1) if found else None


def _major(version: str) -> int:
    return int(re.split(r"[.+-]", version.lstrip("v"))[0] or 0)


def port_checks() -> list[Check]:
    """Each local server's port: free, answered by our server (its pid file), or taken by another program."""
    from etl_platform.dashboard import PORT_VAR, dashboard_port
    from etl_platform.stack import LocalStack
    from etl_platform.stack.service import http_ok, port_open

    services = LocalStack().services
    ports: dict[str, tuple[str, int]] = {name: (var, local_port(name)) for name, (var, _) in LOCAL_PORTS.items()}
    ports["dashboard"] = (PORT_VAR, dashboard_port())
    checks = []
    for name, (var, port) in ports.items():
        label = f"port {port} ({name})"
        if not port_open("127.0.0.1", port):
            checks.append(Check(label, OK, "free"))
            continue
        svc = services.get(name)
        if svc is None:  # dagster and the dashboard: ours when they answer as such
            url = f"http://127.0.0.1:{port}" + ("/server_info" if name == "dagster" else "")
            if http_ok(url):
                checks.append(Check(label, OK, f"{name} answers"))
            else:
                checks.append(Check(label, FAIL, "taken by another program", f"stop it, or set {var} to a free port"))
            continue
        pid, healthy = svc.pid(), svc.healthy()
        if pid is not None and healthy:
            checks.append(Check(label, OK, f"{name} answers (pid {pid}, this checkout's stack)"))
        elif pid is not None:
            checks.append(Check(label, WARN, f"{name} (pid {pid}) is not healthy", f"see {svc.log_path}"))
        elif healthy:
            checks.append(
                Check(
                    label,
                    WARN,
                    f"a {name} answers but this checkout did not start it (another stack?)",
                    f"use it, or set {var} to run a stack of your own",
                )
            )
        else:
            checks.append(Check(label, FAIL, "taken by another program", f"stop it, or set {var} to a free port"))
    return checks


def tool_checks(browser: bool = True) -> list[Check]:
    """The tools the local stack and the tests run, with their versions."""
    from etl_platform.stack.kafka import BUILD_STAMP as KAFKA_BUILT
    from etl_platform.stack.kinesis import PACKAGE_DIR
    from etl_platform.stack.opensearch import BUILD_STAMP as OPENSEARCH_BUILT
    from etl_platform.stack.postgres import PG_BIN

    checks = []
    py = ".".join(map(str, sys.version_info[:3]))
    good = (3, 11) <= sys.version_info[:2] < (3, 13)
    checks.append(
        Check("python", OK if good else FAIL, f"{py} at {sys.executable}", "" if good else "use Python 3.11 or 3.12")
    )

    java = _version(["java", "-version"], r'version "([^"]+)"')
    if java is None:
        checks.append(Check("java", FAIL, "not found (OpenSearch and Kafka run on it)", INSTALL + ": JDK 17"))
    else:
        ok = _major(java) >= 17
        checks.append(Check("java", OK if ok else FAIL, java, "" if ok else "install a Java 17 (or later) runtime"))

    built = OPENSEARCH_BUILT.exists() and KAFKA_BUILT.exists()
    mvn = _version(["mvn", "-v"], r"Apache Maven (\d[\d.]*)")
    if mvn is not None:
        checks.append(Check("maven", OK, mvn))
    else:
        checks.append(
            Check(
                "maven",
                WARN if built else FAIL,
                "not found" + (" (not needed now: the servers are built)" if built else ""),
                INSTALL,
            )
        )

    node = _version(["node", "--version"], r"v?(\d+\.\d+\.\d+)")
    if node is None:
        checks.append(Check("node", FAIL, "not found (kinesis-mock runs on it)", INSTALL))
    else:
        ok = _major(node) >= 18
        checks.append(Check("node", OK if ok else FAIL, node, "" if ok else "install Node.js 18 or later"))
    installed = (PACKAGE_DIR / "main.js").exists()
    if shutil.which("npm"):
        note = "" if installed else "; the first `stack up` installs kinesis-mock"
        checks.append(Check("npm", OK, "found" + note))
    elif installed:
        checks.append(Check("npm", WARN, "not found (not needed now: kinesis-mock is installed)", INSTALL))
    else:
        checks.append(Check("npm", FAIL, "not found, and kinesis-mock is not installed", INSTALL))

    postgres = _version([str(PG_BIN / "postgres"), "--version"], r"PostgreSQL\)? (\d+(?:\.\d+)?)")
    if postgres is None:
        checks.append(Check("postgres", FAIL, f"no server binaries in {PG_BIN}", INSTALL + " (or set ETL_PG_BIN)"))
    else:
        ok = _major(postgres) >= 15
        checks.append(Check("postgres", OK if ok else FAIL, f"{postgres} in {PG_BIN}", "" if ok else INSTALL))
    psql = shutil.which("psql")
    checks.append(Check("psql", OK if psql else WARN, psql or "not found (only for looking at the warehouse)"))

    if browser:
        chromium = next((c for c in ("chromium", "chromium-browser") if shutil.which(c)), None)
        if chromium:
            checks.append(Check("chromium", OK, _version([chromium, "--version"], r"(\d+[\d.]*)") or chromium))
        else:
            checks.append(Check("chromium", WARN, "not found (only the browser tests need it)", INSTALL))
    return checks


def resource_checks() -> list[Check]:
    """Free disk under the stack's directory and available memory."""
    from etl_platform.stack.service import StackPaths

    where = StackPaths.default().root
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / GIB
    if free < DISK_FAIL_GIB:
        disk = Check("disk", FAIL, f"{free:.1f} GiB free at {where}", "free disk space (the stack needs a few GiB)")
    elif free < DISK_WARN_GIB:
        disk = Check("disk", WARN, f"{free:.1f} GiB free at {where}", f"free space: under {DISK_WARN_GIB:.0f} GiB")
    else:
        disk = Check("disk", OK, f"{free:.1f} GiB free at {where}")
    available = _available_memory_gib()
    if available is None:
        memory = Check("memory", WARN, "unknown (no /proc/meminfo)")
    elif available < MEMORY_WARN_GIB:
        memory = Check(
            "memory", WARN, f"{available:.1f} GiB available", f"the stack needs about {MEMORY_WARN_GIB:.0f} GiB"
        )
    else:
        memory = Check("memory", OK, f"{available:.1f} GiB available")
    return [disk, memory]


def _available_memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 / GIB if found else None


def run_checks() -> list[Check]:
    return [*port_checks(), *tool_checks(), *resource_checks()]


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Handler for `etl-platform doctor`."""
    from etl_platform.search.queries import format_table

    checks = run_checks()
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(format_table([asdict(c) for c in checks], ["check", "status", "detail", "fix"]))
        problems = sum(c.status != OK for c in checks)
        print(f"\n{'FAIL' if failed else 'OK'}: {len(checks)} checks, {problems} to look at")
    return 1 if failed else 0
