"""The dbt CLI resource and project for dbt_redshift (target chosen by the deployment profile)."""

import importlib.metadata
import os
import shutil
import sys
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject
from packaging import version

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_redshift"
# The dbt next to this interpreter (the venv's), so loading works without the venv on PATH.
DBT_EXECUTABLE = shutil.which("dbt", path=str(Path(sys.executable).parent)) or shutil.which("dbt") or "dbt"


def dbt_target(env: Mapping[str, str] | None = None) -> str:
    """DBT_TARGET if set; else `redshift` for the aws profile and `postgres` for local."""
    env = os.environ if env is None else env
    return env.get("DBT_TARGET") or ("redshift" if env.get("ETL_PROFILE") == "aws" else "postgres")


dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR, target=dbt_target())


class VenvDbtCliResource(DbtCliResource):
    """DbtCliResource for the dbt-core installed beside this interpreter.

    dagster-dbt asks the executable for its version (`dbt --version`) once per resource instance,
    i.e. once per run: a second Python start that imports dbt and every adapter and looks up PyPI
    (5-8 s on this kind of machine). The executable is this environment's own, so its version is
    the installed dbt-core's, read from package metadata instead.
    """

    @cached_property
    def _cli_version(self) -> version.Version:
        if Path(self.dbt_executable).absolute().parent == Path(sys.executable).absolute().parent:
            return version.parse(importlib.metadata.version("dbt-core"))
        return super()._cli_version


def dbt_resource(target: str | None = None, project: DbtProject = dbt_project) -> DbtCliResource:
    """The dbt CLI resource for this project (target from DBT_TARGET / ETL_PROFILE by default)."""
    return VenvDbtCliResource(project_dir=project, profiles_dir=os.fspath(DBT_PROJECT_DIR),
                              target=target or dbt_target(), dbt_executable=DBT_EXECUTABLE)


