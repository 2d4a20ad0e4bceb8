"""Dagster on ECS: the webserver behind the internal ALB, exactly one daemon, a code server per
workspace location found through Cloud Map, the run task definition `deploy/dagster.yaml` launches
(container `run`), the environment of docs/deploy.md with secrets injected, the ADOT collector
sidecar where traces are made, and the instance's RDS PostgreSQL."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.deploy.cfn_template import REPO, Synthesized, resolve

DAGSTER_YAML = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
LAUNCHER = DAGSTER_YAML["run_launcher"]["config"]
WORKSPACE = yaml.safe_load((REPO / "workspace.yaml").read_text())
SIDECAR = "aws-otel-collector"


def services(s: Synthesized) -> dict[str, dict[str, Any]]:
    return {
        r["Properties"]["ServiceName"].removeprefix(f"{s.settings.prefix}-"): r["Properties"]
        for r in s.of_type("AWS::ECS::Service").values()
    }


def tasks(s: Synthesized) -> dict[str, dict[str, Any]]:
    """Family (without the prefix) -> task definition properties."""
    return {
        r["Properties"]["Family"].removeprefix(f"{s.settings.prefix}-"): r["Properties"]
        for r in s.of_type("AWS::ECS::TaskDefinition").values()
    }


def containers(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["Name"]: c for c in task["ContainerDefinitions"]}


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["Name"]: e["Value"] for e in container.get("Environment", [])}


def test_services_webserver_daemon_and_a_code_server_per_location(synthesized: Synthesized):
    s = synthesized
    locations = [entry["python_module"]["location_name"] for entry in WORKSPACE["load_from"]]
    assert locations == ["etl_platform", "stream"]  # definitions.py and stream_definitions.py
    found = services(s)
    code = {f"code-{name.replace('_', '-')}" for name in locations}
    assert set(found) == {"webserver", "daemon"} | code
    daemon = found["daemon"]
    assert daemon["DesiredCount"] == 1
    assert daemon["DeploymentConfiguration"]["MaximumPercent"] == 100  # never two daemons, even in a deploy
    assert daemon["DeploymentConfiguration"]["MinimumHealthyPercent"] == 0
    assert "LoadBalancers" not in daemon and "ServiceRegistries" not in daemon
    web = found["webserver"]
    (target,) = web["LoadBalancers"]
    assert (target["ContainerName"], target["ContainerPort"]) == ("webserver", 3000)
    _, group = s.one("AWS::ElasticLoadBalancingV2::TargetGroup")
    assert group["Properties"]["HealthCheckPath"] == "/server_info"
    _, listener = s.one("AWS::ElasticLoadBalancingV2::Listener")
    assert (listener["Properties"]["Port"], listener["Properties"]["Protocol"]) == (80, "HTTP")
    # Code servers are found by name: a Cloud Map A record in the private namespace.
    namespace_id, namespace = s.one("AWS::ServiceDiscovery::PrivateDnsNamespace")
    registries = {r["Properties"]["Name"]: k for k, r in s.of_type("AWS::ServiceDiscovery::Service").items()}
    assert set(registries) == code
    for name in code:
        (registry,) = found[name]["ServiceRegistries"]
        assert registry["RegistryArn"] == {"Fn::GetAtt": [registries[name], "Arn"]}
        props = s.props(registries[name])
        assert props["DnsConfig"]["DnsRecords"][0]["Type"] == "A"
        assert props["DnsConfig"]["NamespaceId"] == {"Fn::GetAtt": [namespace_id, "Id"]}
    # The webserver and the daemon load exactly those servers.
    for family in ("webserver", "daemon"):
        container = containers(tasks(s)[family])[family]
        workspace = yaml.safe_load(env(container)["DAGSTER_WORKSPACE_YAML"])
        servers = [entry["grpc_server"] for entry in workspace["load_from"]]
        assert [x["location_name"] for x in servers] == locations
        assert {x["host"] for x in servers} == {f"{n}.{namespace['Properties']['Name']}" for n in code}
        assert all(x["port"] == 4000 for x in servers)
        assert "DAGSTER_WORKSPACE_YAML" in " ".join(container["Command"])


def test_code_servers_serve_their_module(synthesized: Synthesized):
    s = synthesized
    for entry in WORKSPACE["load_from"]:
        module = entry["python_module"]
        task = tasks(s)[f"code-{module['location_name'].replace('_', '-')}"]
        command = containers(task)["code"]["Command"]
        assert command[:3] == ["dagster", "code-server", "start"]
        args = dict(zip(command[3::2], command[4::2], strict=False))
        assert args["-m"] == module["module_name"] and args["--location-name"] == module["location_name"]
        assert args["-p"] == "4000" and args["-d"] == s.settings.code_dir


def test_run_task_definition_is_what_the_run_launcher_expects(synthesized: Synthesized):
    s = synthesized
    run = tasks(s)["run"]
    assert LAUNCHER["container_name"] == "run"
    assert set(containers(run)) == {"run", SIDECAR}
    assert run["Cpu"] == LAUNCHER["run_resources"]["cpu"] and run["Memory"] == LAUNCHER["run_resources"]["memory"]
    assert run["NetworkMode"] == "awsvpc" and run["RequiresCompatibilities"] == ["FARGATE"]
    # The daemon names it by family, so a deploy's new revision is used at once.
    daemon = env(containers(tasks(s)["daemon"])["daemon"])
    assert daemon["DAGSTER_RUN_TASK_DEFINITION"] == run["Family"]
    # Everything the launcher forwards from the daemon into runs is set on the daemon, and every
    # secret the launcher names is injected.
    assert set(LAUNCHER["env_vars"]) <= set(daemon)
    for secret in LAUNCHER["secrets"]:
        assert secret["valueFrom"]["env"] in daemon


def test_app_containers_environment_secrets_and_logs(synthesized: Synthesized):
    s = synthesized
    groups = s.of_type("AWS::Logs::LogGroup")
    repository_id, _ = s.one("AWS::ECR::Repository")
    secrets = {k: r["Properties"]["Name"] for k, r in s.of_type("AWS::SecretsManager::Secret").items()}
    required = {  # docs/deploy.md's required variables of the aws profile, and the instance's
        "ETL_PROFILE",
        "AWS_REGION",
        "ETL_STREAM_NAME",
        "ETL_LAKE_BUCKET",
        "ETL_LEASE_TABLE",
        "ETL_REDSHIFT_HOST",
        "ETL_REDSHIFT_DATABASE",
        "ETL_REDSHIFT_USER",
        "ETL_REDSHIFT_IAM_ROLE",
        "ETL_OPENSEARCH_URL",
        "ETL_OPENSEARCH_USERNAME",
        "ETL_ALERT_SNS_TOPIC_ARN",
        "ETL_KMS_KEY_ARN",
        "ETL_LOG_FORMAT",
        "DAGSTER_HOME",
        "DAGSTER_PG_HOST",
        "DAGSTER_PG_PORT",
        "DAGSTER_PG_DB",
        "DAGSTER_PG_USERNAME",
        "DAGSTER_RUN_TASK_DEFINITION",
        "DAGSTER_MAX_CONCURRENT_RUNS",
        "DAGSTER_COMPUTE_LOG_BUCKET",
        "ETL_REDSHIFT_PASSWORD_SECRET_ARN",
        "ETL_OPENSEARCH_PASSWORD_SECRET_ARN",
        "DAGSTER_PG_PASSWORD_SECRET_ARN",
    }
    seen = 0
    for family, task in tasks(s).items():
        for name, container in containers(task).items():
            logging = container["LogConfiguration"]
            assert logging["LogDriver"] == "awslogs"
            group = logging["Options"]["awslogs-group"]["Ref"]
            assert groups[group]["Properties"]["RetentionInDays"] == s.settings.log_retention_days
            if name == SIDECAR:
                continue
            seen += 1
            values = env(container)
            assert required <= set(values), (family, sorted(required - set(values)))
            assert values["ETL_PROFILE"] == "aws" and values["ETL_LOG_FORMAT"] == "json"
            assert values["ETL_STREAM_NAME"] == s.settings.stream_name
            assert not any("PASSWORD" in k and not k.endswith("_SECRET_ARN") for k in values)  # secrets only
            injected = {x["Name"]: resolve(x["ValueFrom"]) for x in container["Secrets"]}
            assert set(injected) == {"ETL_REDSHIFT_PASSWORD", "ETL_OPENSEARCH_PASSWORD", "DAGSTER_PG_PASSWORD"}
            for value in injected.values():  # a secret of the stack, its password key
                assert any(value.startswith(f"${{{k}}}") for k in secrets) and value.endswith(":password::")
            image = resolve(container["Image"])
            assert f"${{{repository_id}}}" in image and image.endswith(f":{s.settings.image_tag}")
            assert values["ETL_KMS_KEY_ARN"] == {"Fn::GetAtt": [s.one("AWS::KMS::Key")[0], "Arn"]}
    assert seen == len(tasks(s))  # one app container per task definition
    assert all(name.startswith(f"{s.settings.prefix}/") for name in secrets.values())


def test_the_collector_sidecar_where_traces_are_made(synthesized: Synthesized):
    s = synthesized
    for family, task in tasks(s).items():
        found = containers(task)
        traced = family == "run" or family.startswith("code-")
        assert (SIDECAR in found) == traced, family
        app = next(c for name, c in found.items() if name != SIDECAR)
        values = env(app)
        if not traced:
            assert values["ETL_TRACE_EXPORTER"] == "none"
            continue
        assert values["ETL_TRACE_EXPORTER"] == "otlp"
        assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4318"
        sidecar = found[SIDECAR]
        assert re.fullmatch(r"public\.ecr\.aws/aws-observability/aws-otel-collector:v\d+\.\d+\.\d+", sidecar["Image"])
        assert sidecar["Essential"] is False
        config = yaml.safe_load(env(sidecar)["AOT_CONFIG_CONTENT"])
        assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "localhost:4318"
        assert config["service"]["pipelines"]["traces"]["exporters"] == ["awsxray"]
        assert {"Condition": "START", "ContainerName": SIDECAR} in app["DependsOn"]


def test_dagster_database_is_encrypted_private_and_protected(synthesized: Synthesized):
    s = synthesized
    db_id, db = s.one("AWS::RDS::DBInstance")
    props = db["Properties"]
    assert props["Engine"] == "postgres"
    assert props["StorageEncrypted"] is True
    assert props["KmsKeyId"] == {"Fn::GetAtt": [s.one("AWS::KMS::Key")[0], "Arn"]}
    assert props["PubliclyAccessible"] is False and props["DeletionProtection"] is True
    assert db["DeletionPolicy"] == "Snapshot"
    assert resolve(props["MasterUserPassword"]).startswith("{{resolve:secretsmanager:")
    _, subnets = s.one("AWS::RDS::DBSubnetGroup")
    private = {k for k, r in s.of_type("AWS::EC2::Subnet").items() if "private" in str(r["Properties"]["Tags"])}
    assert {x["Ref"] for x in subnets["Properties"]["SubnetIds"]} == private
    # The daemon's storage settings point at it.
    daemon = env(containers(tasks(s)["daemon"])["daemon"])
    assert daemon["DAGSTER_PG_HOST"] == {"Fn::GetAtt": [db_id, "Endpoint.Address"]}
