"""Reading the CDK app's synthesized stack: resources by type, and CloudFormation intrinsics resolved
into comparable strings (`{"Ref": "X"}` -> `${X}`, `Fn::Join` joined, `Fn::GetAtt` -> `${X.Attr}`).

No AWS, no network: the stack is environment-agnostic. Importing this module puts deploy/cdk on
sys.path and silences jsii's node-version banners before aws_cdk starts.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CDK_DIR = REPO / "deploy" / "cdk"
# jsii warns about node 20's support dates on every start; the warnings are not ours to act on.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
if str(CDK_DIR) not in sys.path:
    sys.path.insert(0, str(CDK_DIR))


@dataclass(frozen=True)
class Synthesized:
    settings: Any  # etl_platform_cdk.StackSettings
    stack: Any  # etl_platform_cdk.EtlPlatformStack
    template: dict[str, Any]
    assertions: Any  # aws_cdk.assertions.Template

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.template["Resources"]

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        """Logical id -> resource, for every resource of CloudFormation type `kind`."""
        return {k: v for k, v in self.resources.items() if v["Type"] == kind}

    def one(self, kind: str) -> tuple[str, dict[str, Any]]:
        found = self.of_type(kind)
        assert len(found) == 1, f"expected one {kind}, found {sorted(found)}"
        return next(iter(found.items()))

    def props(self, logical_id: str) -> dict[str, Any]:
        return self.resources[logical_id].get("Properties", {})


def synthesize(context: dict[str, Any] | None = None) -> Synthesized:
    """The stack as `cdk synth` builds it (cdk.json's context, plus `context`)."""
    import aws_cdk as cdk
    from aws_cdk.assertions import Template
    from etl_platform_cdk import EtlPlatformStack, StackSettings

    defaults = json.loads((CDK_DIR / "cdk.json").read_text())["context"]
    app = cdk.App(context={**defaults, **(context or {})})
    settings = StackSettings.load(app.node.try_get_context)
    stack = EtlPlatformStack(app, "EtlPlatform", settings)
    assertions = Template.from_stack(stack)
    return Synthesized(settings, stack, assertions.to_json(), assertions)


# --- intrinsics -----------------------------------------------------------------------------------
def resolve(value: Any) -> Any:
    """`value` with every intrinsic function turned into a string (recursively)."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return f"${{{arg}}}"
            if key == "Fn::GetAtt":
                return f"${{{arg[0]}.{arg[1]}}}"
            if key == "Fn::Join":
                return str(arg[0]).join(str(resolve(part)) for part in arg[1])
            if key == "Fn::Select":
                return f"${{select({arg[0]},{resolve(arg[1])})}}"
            if key == "Fn::Split":
                return f"split({arg[0]},{resolve(arg[1])})"
        return {k: resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v) for v in value]
    return value


def ref(logical_id: str) -> str:
    """What `resolve` makes of `{"Ref": logical_id}`."""
    return f"${{{logical_id}}}"


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def walk(value: Any) -> Iterator[Any]:
    """Every node of a JSON value."""
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)
