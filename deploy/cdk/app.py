"""Entry point of the CDK app (cdk.json runs it with the project's venv): one environment-agnostic
stack, `EtlPlatform` by default (`-c stack_name=...`), built from CDK context and the project's
config files (etl_platform_cdk.settings says which)."""

from __future__ import annotations

import aws_cdk as cdk
from etl_platform_cdk import EtlPlatformStack, StackSettings


def main() -> None:
    app = cdk.App()
    settings = StackSettings.load(app.node.try_get_context)
    # No env: the stack names no account or region, so synth needs no credentials and no lookups.
    EtlPlatformStack(app, app.node.try_get_context("stack_name") or "EtlPlatform", settings)
    app.synth()


if __name__ == "__main__":
    main()
