"""pyproject.toml's runtime dependencies are complete: a fresh venv with the project installed from
pyproject.toml alone (no lock, no extra) imports every module of etl_platform, assets, resources and
sensors, and definitions.py.

The project is installed editable from a copy of the repo (without .git, .venv, .stack, tests, ...):
the code location runs from its code directory, not as a self-contained wheel (loading it prepares the
dbt project, found as `dbt_redshift/` beside `resources/`, which is no package data; the alarms and
IAM files are read relative to the code too). The copy keeps the shared checkout untouched (setuptools
writes egg-info, dbt writes target/ and logs/). The versions are whatever the resolver picks for
pyproject.toml today (uv's cache makes that fast), so a failure can also mean that a new release of an
unpinned dependency broke an import.

Besides importing, the child scans every module's source for third-party imports (including those
inside functions, which importing does not run) and checks each one is installed. Needs uv and the
package index (or uv's cache), not the local stack.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("etl_platform", "assets", "resources", "sensors")  # [tool.setuptools.packages.find]
# Not copied: top-level folders nothing imports or reads at import, and anything generated.
SKIP_TOP = {".git", ".venv", ".stack", ".dagster_home", "tests", "benchmarks", "docs", "services", "build"}
SKIP_ANYWHERE = {"__pycache__", "node_modules", ".pytest_cache", ".ruff_cache", ".hypothesis"}
SKIP_UNDER = {"dbt_redshift": {"target", "logs", "dbt_packages"}}

# Runs in the fresh venv (python -I: neither the checkout nor PYTHONPATH on sys.path).
CHILD = r"""
import ast, importlib, importlib.util, json, pkgutil, sys, traceback
from pathlib import Path

root, packages = Path(sys.argv[1]), sys.argv[2].split(",")
local = {*packages, "definitions", "stream_definitions"}
imported, failed, origins, missing = [], {}, {}, {}

def load(name):
    try:
        module = importlib.import_module(name)
    except BaseException as exc:  # SystemExit, numba's errors...: report them all
        failed[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return None
    imported.append(name)
    origins[name] = getattr(module, "__file__", None)
    return module

for package in packages:
    module = load(package)
    if module is None:
        continue
    for info in pkgutil.walk_packages(module.__path__, prefix=package + ".",
                                      onerror=lambda name: failed.setdefault(name, "walk failed")):
        # a __main__ module runs its program when imported; its imports are checked below
        if info.name.rpartition(".")[2] != "__main__" and info.name not in imported and info.name not in failed:
            load(info.name)
sys.path.append(str(root))  # the code locations are top-level modules of the code directory, not packages
load("definitions")
load("stream_definitions")

locations = [root / "definitions.py", root / "stream_definitions.py"]
for path in [*locations, *(p for pkg in packages for p in (root / pkg).rglob("*.py"))]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in local or top == "__future__":
                continue
            if importlib.util.find_spec(top) is None:
                missing.setdefault(top, set()).add(str(path.relative_to(root)))

missing = {top: sorted(files) for top, files in missing.items()}
print(json.dumps({"imported": imported, "failed": failed, "origins": origins, "missing": missing}))
"""


def _uv() -> list[str]:
    try:
        import uv  # noqa: F401  the test extra pins uv (scripts/install.sh's version)
    except ImportError:
        found = shutil.which("uv")
        if found is None:
            pytest.fail("uv is neither installed in this environment nor on PATH", pytrace=False)
        return [found]
    return [sys.executable, "-m", "uv"]


def _ignore(directory: str, names: list[str]) -> set[str]:
    rel = Path(directory).relative_to(REPO)
    skip = {n for n in names if n in SKIP_ANYWHERE or n.endswith(".egg-info")}
    if rel == Path("."):
        skip |= SKIP_TOP.intersection(names)
    skip |= SKIP_UNDER.get(rel.as_posix(), set()).intersection(names)
    return skip


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    return result


@pytest.mark.timeout(600)
def test_runtime_dependencies_import_everything(tmp_path):
    # The local profile, whatever the shell exports; no venv, PYTHONPATH or dbt settings leaking in.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ETL_", "DBT_", "PYTHON", "DAGSTER_")) and k != "VIRTUAL_ENV"
    }
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    (tmp_path / "dagster_home").mkdir()
    uv, src, venv = _uv(), tmp_path / "src", tmp_path / "venv"
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])  # as if activated (dbt, ...)
    timings = {}

    start = time.monotonic()
    shutil.copytree(REPO, src, ignore=_ignore, symlinks=True)
    _run([*uv, "venv", "-q", "-p", sys.executable, str(venv)], env, tmp_path, 120)
    python = venv / "bin" / "python"
    # pyproject.toml alone: no lock, no constraint, no extra.
    _run([*uv, "pip", "install", "-q", "-p", str(python), "-e", str(src)], env, tmp_path, 480)
    timings["install"] = time.monotonic() - start

    start = time.monotonic()
    result = _run([str(python), "-I", "-c", CHILD, str(src), ",".join(PACKAGES)], env, tmp_path, 480)
    timings["imports"] = time.monotonic() - start
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"packaging: install {timings['install']:.1f}s, imports {timings['imports']:.1f}s, "
        f"{len(report['imported'])} modules"
    )

    failed = "\n".join(f"  {name}: {error}" for name, error in sorted(report["failed"].items()))
    assert not failed, f"modules that do not import with pyproject.toml's dependencies alone:\n{failed}"
    missing = "\n".join(f"  {top} ({', '.join(files)})" for top, files in sorted(report["missing"].items()))
    assert not missing, f"third-party modules imported by the code but not installed:\n{missing}"
    # The modules came from the copy, not the shared checkout or another environment.
    strays = {
        name: origin
        for name, origin in report["origins"].items()
        if origin and not Path(origin).resolve().is_relative_to(src.resolve())
    }
    assert not strays, f"modules imported from outside the installed copy: {strays}"
    expected = {
        p.relative_to(src).with_suffix("").as_posix().replace("/", ".")
        for pkg in PACKAGES
        for p in (src / pkg).rglob("*.py")
    }
    expected = {name.removesuffix(".__init__") for name in expected if not name.endswith(".__main__")}
    assert expected <= set(report["imported"]), f"modules never imported: {sorted(expected - set(report['imported']))}"
    _run([str(venv / "bin" / "etl-platform"), "--help"], env, tmp_path, 120)
