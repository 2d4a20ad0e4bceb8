"""The platform's IAM roles, built from security/iam/*.json and nothing else.

Each document is filled by `etl_platform.ops.security.render_policy` with CDK tokens as the placeholder
values, and attached to its role as managed policies:

- documents with per-pipeline placeholders (`${StreamName}`, `${LakeRoot}`, `${KafkaTopicPrefix}`) are
  rendered once per pipeline and all attached: the default pipeline's lake root is "", another's
  "<name>/", each with its own stream (or topic). A pipeline's rendering keeps only the statements for
  its source: Kinesis pipelines drop the `kafka-cluster:` statements and Kafka pipelines the `kinesis:`
  ones (each grants on that pipeline's name, so the other kind's would name a stream or topic that
  does not exist);
- `ecs-task-execution` (`${EcsLogGroup}`) is rendered once per ECS log group;
- the others once.

Roles are handed to other constructs as `without_policy_updates()`: CDK's automatic grants (image
pulls, log writes, secret reads) are dropped, so a role can do exactly what its documents say; the
tests compare every attached policy with its rendering.

`bootstrap` is not created: the stack itself makes what the bootstrap job would (streams, key,
bucket security and lifecycle, lease table, alarms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from constructs import Construct

from etl_platform.ops.security import IAM_DIR, PLACEHOLDER_RE, render_policy
from etl_platform.pipelines import Pipeline
from etl_platform_cdk.settings import StackSettings

PER_PIPELINE = ("StreamName", "LakeRoot", "KafkaTopicPrefix")
OTHER_SOURCE = {"kinesis": "kafka-cluster:", "kafka": "kinesis:"}  # statements a pipeline's rendering drops
ECS_TASKS = "ecs-tasks.amazonaws.com"
MAX_MANAGED_POLICIES = 10  # IAM's default quota of managed policies per role
# Which principal assumes each role (docs/deploy.md#topology).
ROLES: Mapping[str, str] = {
    "consumer": ECS_TASKS,  # the run task definition's task role (shard workers, lake backfills)
    "orchestrator": ECS_TASKS,  # webserver, daemon, code servers (sensors), scaling runs
    "loader": ECS_TASKS,  # warehouse and dbt runs (ecs/task_overrides)
    "indexer": ECS_TASKS,  # search runs (ecs/task_overrides)
    "producer": "account",  # applications in the account assume it
    "redshift-copy": "redshift.amazonaws.com",  # Redshift's COPY ... IAM_ROLE
    "ecs-task-execution": ECS_TASKS,  # every task's agent
}


def placeholders(name: str) -> set[str]:
    """The placeholders security/iam/<name>.json uses."""
    return set(PLACEHOLDER_RE.findall((IAM_DIR / f"{name}.json").read_text(encoding="utf-8")))


def for_source(document: dict[str, Any], kind: str) -> dict[str, Any]:
    """`document` without the statements that only serve the other kind of source."""
    other = OTHER_SOURCE[kind]

    def foreign(statement: Mapping[str, Any]) -> bool:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        return all(a.startswith(other) for a in actions)

    return {**document, "Statement": [s for s in document["Statement"] if not foreign(s)]}


def pipeline_values(pipeline: Pipeline) -> dict[str, str]:
    """The per-pipeline placeholders' values for one pipeline."""
    return {
        "StreamName": pipeline.stream.name,
        "LakeRoot": pipeline.lake_root,
        # A pipeline's grants name its own topic (the prefix matches it and nothing shorter).
        "KafkaTopicPrefix": pipeline.stream.name,
    }


def documents(
    name: str, values: Mapping[str, str], pipelines: Sequence[Pipeline], log_groups: Mapping[str, str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(label, policy document) pairs to attach to role `name`; `log_groups` maps a label to each ECS
    log group's name."""
    used = placeholders(name)
    if used & set(PER_PIPELINE):
        return [
            (p.name, for_source(render_policy(name, {**values, **pipeline_values(p)}), p.stream.kind))
            for p in pipelines
        ]
    if "EcsLogGroup" in used and log_groups:
        return [(label, render_policy(name, {**values, "EcsLogGroup": group})) for label, group in log_groups.items()]
    return [("all", render_policy(name, values))]


@dataclass(frozen=True)
class RoleSet:
    roles: Mapping[str, iam.Role]

    def immutable(self, name: str) -> iam.IRole:
        """The role for constructs that would otherwise add CDK's automatic grants to it."""
        return self.roles[name].without_policy_updates()


class PlatformRoles(Construct):
    """One role per security/iam document (but bootstrap), named `<prefix>-<document>` so the
    orchestrator's `iam:PassRole` on `${RolePrefix}-*` covers the run roles."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        settings: StackSettings,
        values: Mapping[str, str],
        run_log_group: str,
        ecs_log_groups: Mapping[str, str],
    ) -> None:
        super().__init__(scope, construct_id)
        base = {
            "AWS::Region": Aws.REGION,
            "AWS::AccountId": Aws.ACCOUNT_ID,
            "SecretPrefix": settings.secret_prefix,
            "RolePrefix": settings.prefix,
            "LeaseTable": settings.lease_table_name,
            "KmsAlias": settings.security.kms_alias,
            "EcsLogGroup": run_log_group,  # the run launcher reads the run tasks' logs
            **values,
        }
        self.values = base
        self.policies: dict[str, list[iam.ManagedPolicy]] = {}
        roles: dict[str, iam.Role] = {}
        for name, principal in ROLES.items():
            role = iam.Role(
                self,
                _pascal(name),
                role_name=f"{settings.prefix}-{name}",
                assumed_by=iam.AccountRootPrincipal() if principal == "account" else iam.ServicePrincipal(principal),
                description=f"{settings.prefix} {name}: security/iam/{name}.json",
            )
            attached = []
            rendered = documents(name, base, list(settings.pipelines), ecs_log_groups)
            if len(rendered) > MAX_MANAGED_POLICIES:
                raise ValueError(
                    f"role {name} would hold {len(rendered)} managed policies (one per pipeline or log group); "
                    f"IAM allows {MAX_MANAGED_POLICIES} per role unless the account's quota is raised"
                )
            for label, document in rendered:
                policy = iam.ManagedPolicy(
                    self,
                    f"{_pascal(name)}-{label}",
                    document=iam.PolicyDocument.from_json(document),
                    description=f"security/iam/{name}.json ({label})",
                )
                role.add_managed_policy(policy)
                attached.append(policy)
            self.policies[name] = attached
            roles[name] = role
        self.set = RoleSet(roles)


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))
