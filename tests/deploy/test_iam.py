"""Every platform role holds exactly its security/iam document, rendered by
`etl_platform.ops.security.render_policy` with the values of the resources the template really
creates (found in the template, not taken from the stack's code), once per pipeline where the
document is per stream / lake root, once per ECS log group for the execution role."""

from __future__ import annotations

import json
from typing import Any

import pytest

from etl_platform.ops.security import IAM_DIR, PLACEHOLDER_RE, render_policy
from tests.deploy.cfn_template import Synthesized, listed, ref, resolve

ROLES = ("consumer", "orchestrator", "loader", "indexer", "producer", "redshift-copy", "ecs-task-execution")
PER_PIPELINE = {"StreamName", "LakeRoot", "KafkaTopicPrefix"}
XRAY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"}
# Managed policies: at most 6,144 characters without whitespace; 10 per role unless the quota is raised.
MAX_POLICY_CHARS, MAX_POLICIES_PER_ROLE = 6144, 10


def normalized(document: dict[str, Any]) -> list[tuple]:
    """A policy document comparable whatever CDK did to it (single-item lists become scalars)."""

    def condition(value: dict[str, Any]) -> str:
        return json.dumps({op: {k: listed(v) for k, v in kv.items()} for op, kv in value.items()}, sort_keys=True)

    return [
        (
            st["Sid"],
            st["Effect"],
            tuple(listed(st["Action"])),
            tuple(listed(st["Resource"])),
            condition(st.get("Condition", {})),
        )
        for st in document["Statement"]
    ]


def values_from_template(s: Synthesized) -> dict[str, str]:
    """Each placeholder's value as the template's own resources give it."""
    one = s.one
    props = s.props

    def named(kind: str, key: str) -> str:
        return props(one(kind)[0])[key]

    run_task = next(
        r["Properties"]
        for r in s.of_type("AWS::ECS::TaskDefinition").values()
        if r["Properties"]["Family"].endswith("-run")
    )
    (run,) = [c for c in run_task["ContainerDefinitions"] if c["Name"] == "run"]
    run_log_group = s.props(run["LogConfiguration"]["Options"]["awslogs-group"]["Ref"])["LogGroupName"]
    secrets = [r["Properties"]["Name"] for r in s.of_type("AWS::SecretsManager::Secret").values()]
    prefixes = {name.split("/")[0] for name in secrets}
    assert len(prefixes) == 1, secrets
    roles = [r["Properties"]["RoleName"] for r in s.of_type("AWS::IAM::Role").values() if "RoleName" in r["Properties"]]
    role_prefix = s.settings.prefix
    assert all(name.startswith(f"{role_prefix}-") for name in roles)
    kafka_id = one("AWS::MSK::ServerlessCluster")[0]
    return {
        "AWS::Region": "${AWS::Region}",
        "AWS::AccountId": "${AWS::AccountId}",
        "LakeBucket": ref(one("AWS::S3::Bucket")[0]),
        "KmsKeyId": ref(one("AWS::KMS::Key")[0]),
        "KmsAlias": named("AWS::KMS::Alias", "AliasName"),
        "AlertTopicName": f"${{{one('AWS::SNS::Topic')[0]}.TopicName}}",
        "OpenSearchDomain": named("AWS::OpenSearchService::Domain", "DomainName"),
        "EcsCluster": named("AWS::ECS::Cluster", "ClusterName"),
        "EcsTaskDefinitionFamily": run_task["Family"],
        "EcsLogGroup": run_log_group,
        "EcrRepository": named("AWS::ECR::Repository", "RepositoryName"),
        "SecretPrefix": prefixes.pop(),
        "RolePrefix": role_prefix,
        "LeaseTable": named("AWS::DynamoDB::Table", "TableName"),
        "MskCluster": named("AWS::MSK::ServerlessCluster", "ClusterName"),
        "MskClusterUuid": f"${{select(2,split(/,${{{kafka_id}.Arn}}))}}",  # the ARN's last part
    }


def expected_documents(s: Synthesized, role: str) -> list[list[tuple]]:
    values = values_from_template(s)
    used = set(PLACEHOLDER_RE.findall((IAM_DIR / f"{role}.json").read_text()))
    streams = {r["Properties"]["Name"] for r in s.of_type("AWS::Kinesis::Stream").values()}
    if used & PER_PIPELINE:
        documents = []
        for pipeline in s.settings.pipelines:
            if pipeline.stream.kind == "kinesis":
                assert pipeline.stream.name in streams  # the rendering names a stream the stack creates
            per = {"StreamName": pipeline.stream.name, "LakeRoot": pipeline.lake_root}
            rendered = render_policy(role, {**values, **per, "KafkaTopicPrefix": pipeline.stream.name})
            other = "kafka-cluster:" if pipeline.stream.kind == "kinesis" else "kinesis:"
            rendered["Statement"] = [
                st for st in rendered["Statement"] if not all(a.startswith(other) for a in listed(st["Action"]))
            ]
            documents.append(normalized(rendered))
        return documents
    if "EcsLogGroup" in used and role == "ecs-task-execution":
        groups = {
            s.props(c["LogConfiguration"]["Options"]["awslogs-group"]["Ref"])["LogGroupName"]
            for task in s.of_type("AWS::ECS::TaskDefinition").values()
            for c in task["Properties"]["ContainerDefinitions"]
        }
        return [normalized(render_policy(role, {**values, "EcsLogGroup": g})) for g in sorted(groups)]
    return [normalized(render_policy(role, values))]


def role_ids(s: Synthesized) -> dict[str, str]:
    prefix = s.settings.prefix
    found = {
        r["Properties"]["RoleName"].removeprefix(f"{prefix}-"): k
        for k, r in s.of_type("AWS::IAM::Role").items()
        if r["Properties"].get("RoleName", "").startswith(f"{prefix}-")
    }
    assert set(found) == set(ROLES)  # bootstrap is deliberately absent (docs/deploy.md)
    return found


@pytest.mark.parametrize("role", ROLES)
def test_role_holds_exactly_its_rendered_documents(synthesized: Synthesized, role: str):
    s = synthesized
    role_id = role_ids(s)[role]
    props = s.props(role_id)
    assert "Policies" not in props  # no inline grants beside the documents
    inline = [p for p in s.of_type("AWS::IAM::Policy").values() if {"Ref": role_id} in p["Properties"]["Roles"]]
    assert inline == []  # and no CDK auto-grants (image pulls, log writes, secret reads)
    attached = [s.props(arn["Ref"]) for arn in props["ManagedPolicyArns"]]
    assert len(attached) <= MAX_POLICIES_PER_ROLE
    actual = sorted(normalized(resolve(p["PolicyDocument"])) for p in attached)
    assert actual == sorted(expected_documents(s, role))


def test_per_pipeline_renderings_scope_each_pipelines_prefixes_and_stream(synthesized: Synthesized):
    """The point of ${LakeRoot}: the seed pipeline's consumer grants reach seed/raw/ and its own stream."""
    s = synthesized
    role_id = role_ids(s)["consumer"]
    documents = [
        json.dumps(resolve(s.props(a["Ref"])["PolicyDocument"])) for a in s.props(role_id)["ManagedPolicyArns"]
    ]
    seed = [d for d in documents if "/seed/raw/*" in d]
    assert len(seed) == 1
    assert "stream/seed-events" in seed[0] and "_state/seed-events/*" in seed[0]
    assert "stream/etl-platform-events" not in seed[0] and "kafka-cluster:" not in seed[0]
    (kafka,) = [d for d in documents if "/msk-events/raw/*" in d]
    assert "kinesis:" not in kafka and "topic/" in kafka and "msk-events*" in kafka


def test_trust_and_the_collector_sidecars_grants(synthesized: Synthesized):
    s = synthesized
    ids = role_ids(s)
    principals = {role: s.props(ids[role])["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] for role in ROLES}
    for role in ("consumer", "orchestrator", "loader", "indexer", "ecs-task-execution"):
        assert principals[role] == {"Service": "ecs-tasks.amazonaws.com"}
    assert principals["redshift-copy"] == {"Service": "redshift.amazonaws.com"}
    assert "AWS" in principals["producer"]  # the account's principals assume it
    # Roles of tasks with the ADOT sidecar (runs under every run role, the code servers) may send traces.
    for role in ("consumer", "orchestrator", "loader", "indexer"):
        actions = {
            a
            for arn in s.props(ids[role])["ManagedPolicyArns"]
            for st in s.props(arn["Ref"])["PolicyDocument"]["Statement"]
            if "AdotCollector" in st["Sid"]
            for a in listed(st["Action"])
        }
        assert actions == XRAY, role
    # Task definitions use them: runs as consumer, the services as orchestrator, all with the execution role.
    for task in s.of_type("AWS::ECS::TaskDefinition").values():
        props = task["Properties"]
        expected = "consumer" if props["Family"].endswith("-run") else "orchestrator"
        assert props["TaskRoleArn"] == {"Fn::GetAtt": [ids[expected], "Arn"]}
        assert props["ExecutionRoleArn"] == {"Fn::GetAtt": [ids["ecs-task-execution"], "Arn"]}


def test_rendered_documents_fit_managed_policy_limits():
    """With long real-looking values, every document stays under IAM's managed policy size."""
    values = {
        name: "x" * 60
        for name in {
            "LakeBucket",
            "KmsKeyId",
            "OpenSearchDomain",
            "EcsCluster",
            "EcsTaskDefinitionFamily",
            "EcsLogGroup",
            "EcrRepository",
            "SecretPrefix",
            "RolePrefix",
            "LeaseTable",
            "MskCluster",
            "MskClusterUuid",
            "AlertTopicName",
            "KmsAlias",
            "StreamName",
            "KafkaTopicPrefix",
        }
    }
    values |= {"AWS::Region": "ap-southeast-2", "AWS::AccountId": "123456789012", "LakeRoot": "x" * 32 + "/"}
    for role in ROLES:
        text = json.dumps(render_policy(role, values), separators=(",", ":"))
        assert len(text) <= MAX_POLICY_CHARS, (role, len(text))


def test_op_log_grants_match_the_compute_log_manager(synthesized: Synthesized):
    """deploy/dagster.yaml's S3ComputeLogManager writes under its prefix of DAGSTER_COMPUTE_LOG_BUCKET
    (the lake bucket here): every role a run can take may upload there, the webserver's may read."""
    s = synthesized
    prefix = s.settings.run_launcher.compute_log_prefix
    bucket = ref(s.one("AWS::S3::Bucket")[0])
    objects = f"arn:aws:s3:::{bucket}/{prefix}/*"
    ids = role_ids(s)
    for role in ("consumer", "loader", "indexer", "orchestrator"):
        grants = [
            set(listed(st["Action"]))
            for arn in s.props(ids[role])["ManagedPolicyArns"]
            for st in resolve(s.props(arn["Ref"])["PolicyDocument"])["Statement"]
            if objects in listed(st["Resource"])
        ]
        assert grants and all("s3:PutObject" in g for g in grants), role
        if role == "orchestrator":
            assert all("s3:GetObject" in g for g in grants)
    for task in s.of_type("AWS::ECS::TaskDefinition").values():
        for container in task["Properties"]["ContainerDefinitions"]:
            values = {e["Name"]: e["Value"] for e in container["Environment"]}
            if "DAGSTER_COMPUTE_LOG_BUCKET" in values:
                assert resolve(values["DAGSTER_COMPUTE_LOG_BUCKET"]) == bucket
