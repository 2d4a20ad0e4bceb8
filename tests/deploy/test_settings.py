"""What the stack is built from: context values are validated naming the key, the project's files are
read through the platform's loaders, and the context switches change the template as documented."""

from __future__ import annotations

import pytest

from tests.deploy.cfn_template import synthesize


def load(context):
    from etl_platform_cdk.settings import StackSettings

    return StackSettings.load(context)


def test_defaults_come_from_the_project_files():
    settings = load({})
    assert [p.name for p in settings.pipelines] == ["default", "seed", "msk-events"]
    assert settings.pipelines.default.stream.name == settings.stream_name == "etl-platform-events"
    assert settings.run_launcher.container_name == "run"
    assert (settings.run_launcher.cpu, settings.run_launcher.memory_mib) == (1024, 2048)
    assert [c.module for c in settings.code_locations] == ["definitions", "stream_definitions"]
    assert settings.lease_table["TableName"] == settings.lease_table_name == "etl-platform-leases"
    assert settings.opensearch_version == "OpenSearch_2.19"
    # Room for every shard of every stream (64 max per Kinesis stream, the topic's partitions) + 8.
    assert settings.max_concurrent_runs == 64 + 64 + 2 + 8
    assert settings.repo_path_in_image(settings.pipelines_file) == "/opt/etl-platform/config/pipelines.yaml"


@pytest.mark.parametrize(
    "context,fragment",
    [
        ({"prefix": "Etl_Platform"}, "context prefix="),
        ({"prefix": "a-prefix-much-too-long-for-opensearch"}, "context prefix="),
        ({"log_retention_days": 31}, "log_retention_days=31 must be one of"),
        ({"nat_gateways": 0}, "nat_gateways"),
        ({"stream_mode": "auto"}, "stream_mode='auto'"),
        (
            {"adot_collector_image": "public.ecr.aws/aws-observability/aws-otel-collector:latest"},
            "adot_collector_image",
        ),
        ({"pipelines_file": "../outside.yaml"}, "pipelines_file"),
        ({"lake_bucket_versioned": "maybe"}, "lake_bucket_versioned"),
    ],
)
def test_bad_context_names_the_key(context, fragment):
    from etl_platform_cdk.settings import ContextError

    with pytest.raises(ContextError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        load(context)


def test_context_strings_from_the_command_line_are_parsed():
    settings = load({"nat_gateways": "1", "lake_bucket_versioned": "true", "stream_mode": "on_demand"})
    assert settings.nat_gateways == 1 and settings.lake_bucket_versioned is True and settings.on_demand_streams
    assert load({"start_services": "false"}).start_services is False


def test_context_switches_change_the_template():
    """On-demand streams, an HTTPS listener with a certificate, a narrower UI range, one NAT gateway,
    services stopped."""
    certificate = "arn:aws:acm:eu-west-1:123456789012:certificate/abc"
    s = synthesize(
        {
            "stream_mode": "on_demand",
            "certificate_arn": certificate,
            "ui_cidr": "10.1.0.0/16",
            "nat_gateways": 1,
            "start_services": False,
        }
    )
    for stream in s.of_type("AWS::Kinesis::Stream").values():
        assert stream["Properties"]["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
        assert "ShardCount" not in stream["Properties"]
    _, listener = s.one("AWS::ElasticLoadBalancingV2::Listener")
    props = listener["Properties"]
    assert (props["Port"], props["Protocol"]) == (443, "HTTPS")
    assert props["Certificates"] == [{"CertificateArn": certificate}]
    assert props["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    (alb_group,) = [
        g for g in s.of_type("AWS::EC2::SecurityGroup").values() if "ALB" in g["Properties"]["GroupDescription"]
    ]
    assert [(r["CidrIp"], r["FromPort"]) for r in alb_group["Properties"]["SecurityGroupIngress"]] == [
        ("10.1.0.0/16", 443)
    ]
    assert len(s.of_type("AWS::EC2::NatGateway")) == 1
    # The first deploy, before an image exists: every service at zero tasks.
    assert {r["Properties"]["DesiredCount"] for r in s.of_type("AWS::ECS::Service").values()} == {0}
    outputs = s.template["Outputs"]
    assert outputs["WebserverUrl"]["Value"]["Fn::Join"][1][0] == "https://"
