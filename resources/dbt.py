"""The dbt_redshift project (a dagster-dbt `DbtProject`), its preparation, and the dbt CLI resource.

Preparation is dagster-dbt's own (`DbtProject.preparer`: `dbt deps` when the project has packages,
then `dbt parse` into target/ under a lock so concurrent loaders parse once):

- under `dagster dev`, `prepare_if_dev()` re-parses on every load, so an edited model shows up on reload;
- anywhere else the manifest is only made when there is none (a clean clone: target/ is git-ignored).
  After editing a model outside `dagster dev`, re-parse with
  `PATH=.venv/bin:$PATH dagster-dbt project prepare-and-package --file resources/dbt.py` (a deployment
  image runs the same at build time, so loading never parses).
"""

import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_redshift"
# The dbt next to this interpreter (the venv's), so loading and runs work without the venv on PATH.
DBT_EXECUTABLE = shutil.which("dbt", path=str(Path(sys.executable).parent)) or shutil.which("dbt") or "dbt"


def dbt_target(profile: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """DBT_TARGET if set; else `redshift` for the aws profile and `postgres` for local (profile: ETL_PROFILE)."""
    env = os.environ if env is None else env
    profile = profile or env.get("ETL_PROFILE")
    return env.get("DBT_TARGET") or ("redshift" if profile == "aws" else "postgres")


dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR, target=dbt_target())


@contextmanager
def _venv_dbt_on_path() -> Iterator[None]:
    """dagster-dbt's preparer runs the `dbt` it finds on PATH: make that this environment's dbt while it runs."""
    bin_dir = os.path.dirname(DBT_EXECUTABLE)
    if not bin_dir or shutil.which("dbt") == DBT_EXECUTABLE:
        yield
        return
    saved = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join(p for p in (bin_dir, saved) if p)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = saved


def prepare_dbt_project(project: DbtProject = dbt_project) -> Path:
    """A loadable `project.manifest_path`: parsed under `dagster dev` or when missing (see the module doc)."""
    with _venv_dbt_on_path():
        if project.manifest_path.exists():
            project.prepare_if_dev()
        else:
            project.preparer.prepare(project)  # what `dagster-dbt project prepare-and-package` runs
    return project.manifest_path


def dbt_resource(target: str | None = None, project: DbtProject = dbt_project) -> DbtCliResource:
    """The dbt CLI resource for this project (target: DBT_TARGET / ETL_PROFILE by default), running the venv's dbt.

    dagster-dbt runs `dbt --version` once per resource instance, i.e. once per run that invokes dbt
    (about 3 s here); dagster-dbt 0.29 has no public way to skip it.
    """
    return DbtCliResource(project_dir=project, target=target or dbt_target(), dbt_executable=DBT_EXECUTABLE)
