"""`make synth`'s command, the pinned CDK CLI, synthesizes the app offline without AWS credentials,
and cfn-lint finds nothing in what it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.cfn_template import CDK_DIR, REPO

CFN_LINT = Path(sys.executable).parent / "cfn-lint"


def offline_env() -> dict[str, str]:
    """This process's environment without any AWS setting, and instance metadata unreachable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["HOME"] = env.get("HOME", str(REPO))
    return env


def test_cdk_cli_synthesizes_offline_and_cfn_lint_is_clean(tmp_path: Path):
    if not (CDK_DIR / "node_modules" / ".bin" / "cdk").exists():
        pytest.fail("the CDK CLI is not installed: run `make install` (npm ci in deploy/cdk)", pytrace=False)
    out = tmp_path / "cdk.out"
    synth = subprocess.run(
        ["bash", str(REPO / "scripts" / "synth.sh"), str(out)],
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert synth.returncode == 0, synth.stdout + synth.stderr
    assert "end-of-life" not in synth.stderr  # jsii's node banners are silenced
    manifest = json.loads((out / "manifest.json").read_text())
    templates = sorted(out.glob("*.template.json"))
    assert [t.name for t in templates] == ["EtlPlatform.template.json"]
    stack = manifest["artifacts"]["EtlPlatform"]
    # Environment-agnostic: no account or region was looked up or baked in.
    assert stack["environment"] == "aws://unknown-account/unknown-region"
    assert not any(m for m in manifest.get("missing", []))  # no context lookups were needed
    # aws-cdk-lib's own template validation found nothing either.
    report = out / "validation-report.json"
    assert not report.exists() or json.loads(report.read_text())["pluginReports"] == []

    lint = subprocess.run(
        [str(CFN_LINT), "--format", "parseable", *map(str, templates)],
        cwd=REPO,  # .cfnlintrc, if any, applies
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout + lint.stderr
