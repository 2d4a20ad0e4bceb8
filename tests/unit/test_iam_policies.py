"""Least privilege, checked against the code: every AWS call is allowed to the role that makes it, and no
policy grants `*` where a narrower grant is possible.

The scan parses `etl_platform/`, `assets/`, `sensors/` and `resources/` and finds boto3 client calls:
`<receiver>.<method>(...)` where the receiver's name names a service (`kinesis`, `self.s3`,
`consumer.kinesis`, `s3_client`, `cloudwatch`, ...) or is a generic `client` and the method exists in
exactly one of the platform's services, plus `<s3>.get_paginator("<operation>")`. Methods map to IAM
actions through botocore's own operation names (S3's actions differ from its operations and have an
explicit table). Which role runs which code is `MODULE_ROLES` below (per module, with per-function
overrides); a module that calls AWS but has no role fails the test, so new code must be placed.

Calls made inside libraries (dagster-aws's ECS run launcher, opensearch-py) are invisible to
the scan; their grants are in the policies with Sids that say so.
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path

import botocore.session
import pytest

from etl_platform.ops.security import IAM_DIR, PLACEHOLDERS

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("etl_platform", "assets", "sensors", "resources")
EXCLUDED = ("etl_platform/stack/",)  # the local stack's own processes: loopback only, never deployed
SERVICES = ("kinesis", "s3", "cloudwatch", "sns", "kms", "dynamodb")
RECEIVER_TOKENS = {
    "kinesis": "kinesis",
    "dynamodb": "dynamodb",
    "s3": "s3",
    "cloudwatch": "cloudwatch",
    "cw": "cloudwatch",
    "sns": "sns",
    "kms": "kms",
}
ROLES = ("producer", "consumer", "loader", "indexer", "orchestrator", "bootstrap")

# Which deployed role runs a module's AWS calls (longest matching prefix wins).
MODULE_ROLES: dict[str, set[str]] = {
    "etl_platform/stream/producer.py": {"producer"},
    "etl_platform/stream/consumer.py": {"consumer"},  # delivery, in shard worker runs
    "etl_platform/stream/reader.py": {"consumer"},  # GetRecords, in shard worker runs
    "etl_platform/stream/leases.py": {"consumer", "orchestrator"},  # workers own leases; the sensor reads them
    "etl_platform/stream/checkpoints.py": {"consumer"},  # analytics state (the sensor migrates via lake/layout.py)
    "etl_platform/lake/replay.py": {"consumer"},  # processed_events backfills run as consumer
    "etl_platform/stream/shards.py": {"consumer", "orchestrator"},  # runs and the sensor list shards
    "etl_platform/lake/layout.py": {"consumer", "loader", "indexer", "orchestrator"},  # shared lake I/O
    "etl_platform/ops/metrics.py": {"producer", "consumer", "loader", "indexer", "orchestrator"},
    "etl_platform/warehouse/": {"loader"},
    "etl_platform/search/": {"indexer", "consumer"},  # micro-batches index near-real-time (search_sink)
    "etl_platform/ops/alerts.py": {"orchestrator"},
    "etl_platform/ops/alarms.py": {"orchestrator", "bootstrap"},  # evaluate (sensor) / apply (deploy)
    "etl_platform/ops/scaling.py": {"orchestrator"},
    "etl_platform/cli/scale.py": {"orchestrator"},
    "etl_platform/ops/provisioning.py": {"bootstrap"},
    "etl_platform/ops/security.py": {"bootstrap"},
    "sensors/": {"orchestrator"},
    "assets/ingestion.py": {"consumer"},
    "assets/warehouse.py": {"loader"},
    "assets/dbt.py": {"loader"},
    "assets/search.py": {"indexer"},
}
# Functions whose calls only one role makes (reading metrics is the scaler's and the alarms' job).
FUNCTION_ROLES: dict[str, set[str]] = {
    "etl_platform/stream/leases.py:ensure_table": {"bootstrap"},  # `stack up` / the deploy pipeline
    "etl_platform/stream/leases.py:delete_all": {"bootstrap"},  # tests and replays from scratch only
    "etl_platform/ops/metrics.py:statistic": {"orchestrator"},
    "etl_platform/ops/metrics.py:period_values": {"orchestrator"},
    "etl_platform/search/indexer.py:replay_failed": {"indexer"},  # re-indexing parked documents
}

S3_ACTIONS = {
    "ListObjectsV2": ["s3:ListBucket"],
    "ListObjects": ["s3:ListBucket"],
    "HeadBucket": ["s3:ListBucket"],
    "GetObject": ["s3:GetObject"],
    "HeadObject": ["s3:GetObject"],
    "PutObject": ["s3:PutObject"],
    "DeleteObject": ["s3:DeleteObject"],
    "DeleteObjects": ["s3:DeleteObject"],
    "CopyObject": ["s3:GetObject", "s3:PutObject"],
    "ListBuckets": ["s3:ListAllMyBuckets"],
    "CreateBucket": ["s3:CreateBucket"],
    "DeleteBucket": ["s3:DeleteBucket"],
    "PutPublicAccessBlock": ["s3:PutBucketPublicAccessBlock"],
    "GetPublicAccessBlock": ["s3:GetBucketPublicAccessBlock"],
    "PutBucketEncryption": ["s3:PutEncryptionConfiguration"],
    "GetBucketEncryption": ["s3:GetEncryptionConfiguration"],
    "PutBucketLifecycleConfiguration": ["s3:PutLifecycleConfiguration"],
    "GetBucketLifecycleConfiguration": ["s3:GetLifecycleConfiguration"],
    "PutBucketPolicy": ["s3:PutBucketPolicy"],
    "GetBucketPolicy": ["s3:GetBucketPolicy"],
    "DeleteBucketPolicy": ["s3:DeleteBucketPolicy"],
    "upload_file": ["s3:PutObject"],
    "upload_fileobj": ["s3:PutObject"],
    "download_file": ["s3:GetObject"],
    "download_fileobj": ["s3:GetObject"],
}
S3_OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
# Actions AWS does not scope to a resource: "*" is the narrowest grant (conditions narrow further).
NO_RESOURCE_LEVEL = {
    "cloudwatch:PutMetricData",
    "cloudwatch:GetMetricStatistics",
    "cloudwatch:DescribeAlarms",
    "s3:ListAllMyBuckets",
    "kms:CreateKey",
    "kms:TagResource",
    "ecs:DescribeTaskDefinition",
    "ec2:DescribeNetworkInterfaces",
    "ecr:GetAuthorizationToken",
    # The ADOT collector sidecar's X-Ray calls (security/iam's X-Ray statements; X-Ray has no resource types).
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
}
SAMPLE = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "StreamName": "etl-events",
    "LakeBucket": "etl-lake",
    "LakeRoot": "",  # the default pipeline's; tests/deploy checks the per-pipeline renderings
    "KmsKeyId": "1234abcd-12ab-34cd-56ef-1234567890ab",
    "KmsAlias": "alias/etl-platform",
    "AlertTopicName": "etl-alerts",
    "OpenSearchDomain": "etl-search",
    "EcsCluster": "etl",
    "EcsLogGroup": "/etl/runs",
    "EcsTaskDefinitionFamily": "etl-run",
    "EcrRepository": "etl-platform",
    "SecretPrefix": "etl-platform",
    "RolePrefix": "etl-platform",
    "LeaseTable": "etl-platform-leases",
    "MskCluster": "etl-msk",
    "MskClusterUuid": "abcd1234-ab12-cd34-ef56-abcdef123456-1",
    "KafkaTopicPrefix": "msk-",
}


def expected_resources(action: str) -> list[str]:
    """ARNs (with the sample values) the action is called on by our code."""
    service, name = action.split(":", 1)
    region, account = SAMPLE["AWS::Region"], SAMPLE["AWS::AccountId"]
    if action in NO_RESOURCE_LEVEL:
        return ["*"]
    if service == "kinesis":
        return [f"arn:aws:kinesis:{region}:{account}:stream/{SAMPLE['StreamName']}"]
    if service == "s3":
        return (
            [f"arn:aws:s3:::{SAMPLE['LakeBucket']}/<some-object>"]
            if action in S3_OBJECT_ACTIONS
            else [f"arn:aws:s3:::{SAMPLE['LakeBucket']}"]
        )
    if service == "cloudwatch":
        return [f"arn:aws:cloudwatch:{region}:{account}:alarm:{SAMPLE['StreamName']}-Consumer-Lag"]
    if service == "sns":
        return [f"arn:aws:sns:{region}:{account}:{SAMPLE['AlertTopicName']}"]
    if service == "dynamodb":
        return [f"arn:aws:dynamodb:{region}:{account}:table/{SAMPLE['LeaseTable']}"]
    if service == "kms":
        key = f"arn:aws:kms:{region}:{account}:key/{SAMPLE['KmsKeyId']}"
        return [key, f"arn:aws:kms:{region}:{account}:{SAMPLE['KmsAlias']}"] if name == "CreateAlias" else [key]
    raise AssertionError(f"no resource rule for {action}")


# --- scanning -------------------------------------------------------------------------------------
@cache
def method_maps() -> dict[str, dict[str, str]]:
    """boto3 method name -> API operation name, per service (from botocore's models; no network)."""
    session = botocore.session.get_session()
    maps = {}
    for service in SERVICES:
        client = session.create_client(
            service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        maps[service] = dict(client.meta.method_to_api_mapping)
    maps["s3"].update({m: m for m in ("upload_file", "upload_fileobj", "download_file", "download_fileobj")})
    return maps


def to_actions(service: str, operation: str) -> list[str]:
    if service == "s3":
        assert operation in S3_ACTIONS, f"S3 operation {operation} has no IAM mapping in S3_ACTIONS: add it"
        return S3_ACTIONS[operation]
    return [f"{service}:{operation}"]


def _receiver_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):  # kinesis.client().get_records
        return _receiver_name(node.func.value)
    return None


def _service_for(receiver: str, method: str) -> str | None:
    tokens = receiver.lower().split("_")
    for token in tokens:
        if token in RECEIVER_TOKENS:
            return RECEIVER_TOKENS[token]
    if receiver in ("client", "_client"):
        owners = [s for s, m in method_maps().items() if method in m]
        assert len(owners) <= 1, f"`client.{method}` is ambiguous between {owners}: name the receiver by service"
        return owners[0] if owners else None
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path, self.stack, self.calls = path, ["<module>"], []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = _receiver_name(func.value)
            if receiver is not None:
                service = _service_for(receiver, func.attr)
                if service is not None:
                    operation = None
                    if func.attr == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                        operation = method_maps()[service].get(node.args[0].value)
                    elif func.attr in method_maps()[service]:
                        operation = method_maps()[service][func.attr]
                    if operation:
                        for action in to_actions(service, operation):
                            self.calls.append((self.stack[-1], action, node.lineno))
        self.generic_visit(node)


@cache
def scanned_calls() -> dict[str, list[tuple[str, str, int]]]:
    """module path -> [(function, IAM action, line)] for every boto3 call found."""
    found = {}
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(EXCLUDED):
                continue
            scanner = _Scanner(rel)
            scanner.visit(ast.parse(path.read_text(encoding="utf-8"), rel))
            if scanner.calls:
                found[rel] = scanner.calls
    return found


def roles_for(module: str, function: str) -> set[str] | None:
    if f"{module}:{function}" in FUNCTION_ROLES:
        return FUNCTION_ROLES[f"{module}:{function}"]
    matches = [p for p in MODULE_ROLES if module == p or (p.endswith("/") and module.startswith(p))]
    return MODULE_ROLES[max(matches, key=len)] if matches else None


# --- policies -------------------------------------------------------------------------------------
def load_policy(name: str) -> dict:
    return json.loads((IAM_DIR / f"{name}.json").read_text())


def render(value: str) -> str:
    return re.sub(r"\$\{([A-Za-z:]+)\}", lambda m: SAMPLE[m.group(1)], value)


def _listed(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def allows(policy: dict, action: str, resource: str) -> bool:
    """Does some Allow statement grant `action` on `resource`? (Conditions are assumed to be met by our
    calls: the namespace, the request tag, the alias; a Deny never matches our own calls.)"""
    for st in policy["Statement"]:
        if st["Effect"] != "Allow":
            continue
        if not any(fnmatchcase(action.lower(), a.lower()) for a in _listed(st["Action"])):
            continue
        patterns = [render(r) for r in _listed(st["Resource"])]
        if resource.endswith("/<some-object>"):
            bucket_prefix = resource.removesuffix("<some-object>")
            if any(p.startswith(bucket_prefix) or p == "*" for p in patterns):
                return True
        elif any(fnmatchcase(resource, p) for p in patterns):
            return True
    return False


# --- tests ----------------------------------------------------------------------------------------
def test_the_scan_finds_the_platforms_calls():
    """Guards the scanner itself: calls we know exist must be found, attributed to their module."""
    calls = scanned_calls()
    actions = {(module, action) for module, found in calls.items() for _, action, _ in found}
    for expected in [
        ("etl_platform/stream/producer.py", "kinesis:PutRecords"),  # receiver `self.client`
        ("etl_platform/stream/reader.py", "kinesis:GetRecords"),
        ("etl_platform/stream/leases.py", "dynamodb:UpdateItem"),
        ("etl_platform/stream/shards.py", "kinesis:ListShards"),
        ("etl_platform/lake/layout.py", "s3:ListBucket"),  # via get_paginator("list_objects_v2")
        ("etl_platform/lake/layout.py", "s3:PutObject"),
        ("etl_platform/ops/scaling.py", "kinesis:UpdateShardCount"),
        ("etl_platform/ops/metrics.py", "cloudwatch:PutMetricData"),
        ("etl_platform/ops/alarms.py", "cloudwatch:PutMetricAlarm"),
        ("etl_platform/ops/security.py", "kinesis:StartStreamEncryption"),
        ("etl_platform/ops/security.py", "s3:PutEncryptionConfiguration"),
        ("etl_platform/ops/security.py", "kms:CreateKey"),
    ]:
        assert expected in actions, f"scanner missed {expected}"
    # Our own functions that share a name with an API are not AWS calls (metrics.publish vs sns.publish).
    assert not any(a == "sns:Publish" for m, a in actions if m != "etl_platform/ops/alerts.py")


def test_every_module_calling_aws_has_a_role():
    unplaced = sorted({m for m, found in scanned_calls().items() for fn, _, _ in found if roles_for(m, fn) is None})
    assert not unplaced, f"modules call AWS but have no role in MODULE_ROLES: {unplaced}"


def test_every_called_action_is_allowed_to_its_role():
    needed: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, found in scanned_calls().items():
        for function, action, line in found:
            for role in roles_for(module, function) or ():
                needed[role][action].append(f"{module}:{line}")
    missing = []
    for role, actions in sorted(needed.items()):
        policy = load_policy(role)
        for action, where in sorted(actions.items()):
            for resource in expected_resources(action):
                if not allows(policy, action, render(resource)):
                    missing.append(f"{role}: {action} on {resource} (called at {', '.join(where[:3])})")
    assert not missing, "policies do not allow these calls:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", sorted(IAM_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_policy_grants_nothing_broader_than_needed(path):
    policy = json.loads(path.read_text())
    assert policy["Version"] == "2012-10-17"
    sids = [st.get("Sid") for st in policy["Statement"]]
    assert all(sids) and len(set(sids)) == len(sids), "every statement needs a unique Sid saying why"
    for st in policy["Statement"]:
        where = f"{path.name} {st['Sid']}"
        assert set(st) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, f"{where}: NotAction/NotResource"
        assert st["Effect"] in ("Allow", "Deny")
        actions = _listed(st["Action"])
        assert not any("*" in a for a in actions), f"{where}: wildcard action {actions}"
        for resource in _listed(st["Resource"]):
            if resource == "*":
                broad = [a for a in actions if a not in NO_RESOURCE_LEVEL]
                assert not broad, f"{where}: Resource '*' for {broad}, which support resource-level permissions"
                continue
            if "*" in resource:
                head = resource.split("*", 1)[0]
                scoped = any(f"${{{p}}}" in head for p in SAMPLE if not p.startswith("AWS::"))
                assert scoped or "Condition" in st, (
                    f"{where}: {resource} is a wildcard not scoped by a named resource or a Condition"
                )
            assert resource.startswith("arn:aws:"), f"{where}: {resource} is not an ARN"


def test_placeholders_are_documented_and_roles_exist():
    documented = set(PLACEHOLDERS)
    for path in IAM_DIR.glob("*.json"):
        used = set(re.findall(r"\$\{([A-Za-z:]+)\}", path.read_text()))
        assert used <= documented, f"{path.name}: undocumented placeholders {used - documented}"
        assert used <= set(SAMPLE)
    for role in ROLES:
        assert (IAM_DIR / f"{role}.json").exists(), f"no policy for role {role}"
    assert {r for roles in MODULE_ROLES.values() for r in roles} <= set(ROLES)


def test_the_checker_catches_a_missing_grant():
    """A policy without GetRecords must fail the consumer check (the test is not vacuous)."""
    policy = load_policy("consumer")
    stripped = {
        "Statement": [
            {**st, "Action": [a for a in _listed(st["Action"]) if a != "kinesis:GetRecords"]}
            for st in policy["Statement"]
        ]
    }
    stream = expected_resources("kinesis:GetRecords")[0]
    assert allows(policy, "kinesis:GetRecords", stream)
    assert not allows(stripped, "kinesis:GetRecords", stream)
    assert not allows(policy, "kinesis:GetRecords", stream.replace("etl-events", "other-stream"))
