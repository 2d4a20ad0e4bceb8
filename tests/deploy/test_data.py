"""The stack's data: the KMS key, every pipeline's stream, the MSK cluster, the lake bucket (its rules
equal to the bootstrap's for every pipeline's lake root), the lease table as the code creates it,
Redshift and OpenSearch."""

from __future__ import annotations

from typing import Any

from etl_platform.ops.security import lifecycle_rules, load_security_config
from tests.deploy.cfn_template import REPO, Synthesized, resolve

LAKE = load_security_config(REPO / "config" / "lake.yaml")


def key_id(s: Synthesized) -> str:
    return s.one("AWS::KMS::Key")[0]


def test_kms_key_rotates_and_has_the_configured_alias(synthesized: Synthesized):
    s = synthesized
    logical_id, key = s.one("AWS::KMS::Key")
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == "Retain"
    _, alias = s.one("AWS::KMS::Alias")
    assert alias["Properties"] == {"AliasName": LAKE.kms_alias, "TargetKeyId": {"Fn::GetAtt": [logical_id, "Arn"]}}


def test_one_stream_per_kinesis_pipeline_as_the_pipelines_file_says(synthesized: Synthesized):
    s = synthesized
    streams = {r["Properties"]["Name"]: r["Properties"] for r in s.of_type("AWS::Kinesis::Stream").values()}
    kinesis = [p for p in s.settings.pipelines if p.stream.kind == "kinesis"]
    assert sorted(streams) == sorted(p.stream.name for p in kinesis)
    assert "etl-platform-events" in streams and "seed-events" in streams  # default (context) and seed
    assert "msk-events" not in streams  # a Kafka topic, not a Kinesis stream
    for pipeline in kinesis:
        props = streams[pipeline.stream.name]
        assert props["ShardCount"] == pipeline.stream.shards
        assert props["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}
        assert props["RetentionPeriodHours"] == (pipeline.stream.retention_hours or LAKE.retention_hours)
        assert (pipeline.stream.encryption or LAKE.stream_encryption) == "KMS"
        assert props["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": {"Fn::GetAtt": [key_id(s), "Arn"]}}


def test_kafka_pipelines_get_an_msk_serverless_cluster_with_iam(synthesized: Synthesized):
    s = synthesized
    assert [p.name for p in s.settings.pipelines if p.stream.kind == "kafka"] == ["msk-events"]
    cluster_id, cluster = s.one("AWS::MSK::ServerlessCluster")
    props = cluster["Properties"]
    assert props["ClientAuthentication"] == {"Sasl": {"Iam": {"Enabled": True}}}
    (vpc,) = props["VpcConfigs"]
    private = {k for k, r in s.of_type("AWS::EC2::Subnet").items() if "private" in str(r["Properties"]["Tags"])}
    assert {x["Ref"] for x in vpc["SubnetIds"]} == private
    # Its IAM brokers reach every task as ETL_KAFKA_BOOTSTRAP (GetBootstrapBrokers, a custom resource).
    ((brokers_id, brokers),) = s.of_type("Custom::AWS").items()
    assert "GetBootstrapBrokers" in resolve(brokers["Properties"]["Create"])
    assert cluster_id in resolve(brokers["Properties"]["Create"])
    for task in s.of_type("AWS::ECS::TaskDefinition").values():
        for container in task["Properties"]["ContainerDefinitions"]:
            if container["Name"] != "aws-otel-collector":
                env = {e["Name"]: e["Value"] for e in container["Environment"]}
                assert env["ETL_KAFKA_BOOTSTRAP"] == {"Fn::GetAtt": [brokers_id, "BootstrapBrokerStringSaslIam"]}


def template_rules(bucket: dict[str, Any]) -> list[dict[str, Any]]:
    """The bucket's CloudFormation lifecycle rules back in S3's API shape (what lifecycle_rules returns)."""
    rules = []
    for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]:
        out: dict[str, Any] = {"ID": rule["Id"], "Filter": {"Prefix": rule.get("Prefix", "")}, "Status": rule["Status"]}
        if "Transitions" in rule:
            out["Transitions"] = [
                {"Days": t["TransitionInDays"], "StorageClass": t["StorageClass"]} for t in rule["Transitions"]
            ]
        if "ExpirationInDays" in rule:
            out["Expiration"] = {"Days": rule["ExpirationInDays"]}
        if "AbortIncompleteMultipartUpload" in rule:
            out["AbortIncompleteMultipartUpload"] = {
                "DaysAfterInitiation": rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
            }
        rules.append(out)
    return rules


def test_lake_bucket_encryption_access_tls_and_lifecycle_for_every_lake_root(synthesized: Synthesized):
    s = synthesized
    bucket_id, bucket = s.one("AWS::S3::Bucket")
    props = bucket["Properties"]
    (sse,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse == {
        "BucketKeyEnabled": True,
        "ServerSideEncryptionByDefault": {
            "KMSMasterKeyID": {"Fn::GetAtt": [key_id(s), "Arn"]},
            "SSEAlgorithm": "aws:kms",
        },
    }
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["DeletionPolicy"] == "Retain"
    # TLS only: a Deny of every s3 action on the bucket and its objects without aws:SecureTransport.
    _, policy = s.one("AWS::S3::BucketPolicy")
    assert policy["Properties"]["Bucket"] == {"Ref": bucket_id}
    (deny,) = [st for st in policy["Properties"]["PolicyDocument"]["Statement"] if st["Effect"] == "Deny"]
    assert deny["Action"] == "s3:*" and deny["Principal"] == {"AWS": "*"}
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert sorted(resolve(deny["Resource"])) == [f"${{{bucket_id}.Arn}}", f"${{{bucket_id}.Arn}}/*"]

    roots = [p.lake_root for p in s.settings.pipelines]
    assert roots == ["", "seed/", "msk-events/"]
    assert template_rules(bucket) == lifecycle_rules(LAKE, roots)
    prefixes = {r["Filter"]["Prefix"] for r in template_rules(bucket)}
    assert {"raw/", "seed/raw/", "msk-events/raw/", "seed/errors/"} <= prefixes
    assert not any(part.startswith("_") for p in prefixes for part in p.split("/"))  # state never expires


def test_lease_table_is_what_leases_ensure_table_creates(synthesized: Synthesized):
    s = synthesized
    _, table = s.one("AWS::DynamoDB::Table")
    props = table["Properties"]
    # The key schema of etl_platform/stream/leases.py (one item per stream and shard).
    assert props["KeySchema"] == [
        {"AttributeName": "stream", "KeyType": "HASH"},
        {"AttributeName": "shard_id", "KeyType": "RANGE"},
    ]
    request = s.settings.lease_table
    assert props["KeySchema"] == request["KeySchema"]
    assert props["AttributeDefinitions"] == request["AttributeDefinitions"]
    assert props["BillingMode"] == request["BillingMode"] == "PAY_PER_REQUEST"
    assert props["TableName"] == request["TableName"] == "etl-platform-leases"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"] == {
        "SSEEnabled": True,
        "SSEType": "KMS",
        "KMSMasterKeyId": {"Fn::GetAtt": [key_id(s), "Arn"]},
    }
    assert props["DeletionProtectionEnabled"] is True and table["DeletionPolicy"] == "Retain"


def test_redshift_is_private_encrypted_and_copies_with_its_role(synthesized: Synthesized):
    s = synthesized
    _, cluster = s.one("AWS::Redshift::Cluster")
    props = cluster["Properties"]
    assert props["PubliclyAccessible"] is False
    assert props["Encrypted"] is True and props["KmsKeyId"] == {"Ref": key_id(s)}
    assert props["EnhancedVpcRouting"] is True
    copy_role = next(
        k
        for k, r in s.of_type("AWS::IAM::Role").items()
        if r["Properties"].get("RoleName", "").endswith("-redshift-copy")
    )
    assert props["IamRoles"] == [{"Fn::GetAtt": [copy_role, "Arn"]}]
    # The password never appears: a dynamic reference into the platform's secret.
    password = resolve(props["MasterUserPassword"])
    assert password.startswith("{{resolve:secretsmanager:") and ":SecretString:password::" in password
    _, subnets = s.one("AWS::Redshift::ClusterSubnetGroup")
    private = {k for k, r in s.of_type("AWS::EC2::Subnet").items() if "private" in str(r["Properties"]["Tags"])}
    assert {x["Ref"] for x in subnets["Properties"]["SubnetIds"]} == private
    # Its audit logs land in groups the stack made (with retention) before the cluster.
    logs = props["LoggingProperties"]
    assert logs["LogDestinationType"] == "cloudwatch" and logs["LogExports"]
    names = {r["Properties"]["LogGroupName"]: k for k, r in s.of_type("AWS::Logs::LogGroup").items()}
    for log in logs["LogExports"]:
        group = names[f"/aws/redshift/cluster/{props['ClusterIdentifier']}/{log}"]
        assert group in cluster["DependsOn"]


def test_opensearch_encrypted_https_fgac_in_the_vpc_across_two_azs(synthesized: Synthesized):
    s = synthesized
    _, domain = s.one("AWS::OpenSearchService::Domain")
    props = domain["Properties"]
    assert props["EncryptionAtRestOptions"] == {"Enabled": True, "KmsKeyId": {"Ref": key_id(s)}}
    assert props["NodeToNodeEncryptionOptions"] == {"Enabled": True}
    assert props["DomainEndpointOptions"]["EnforceHTTPS"] is True
    assert props["DomainEndpointOptions"]["TLSSecurityPolicy"].startswith("Policy-Min-TLS-1-2")
    security = props["AdvancedSecurityOptions"]
    assert security["Enabled"] is True and security["InternalUserDatabaseEnabled"] is True
    assert security["MasterUserOptions"]["MasterUserName"] == s.settings.opensearch_user
    assert resolve(security["MasterUserOptions"]["MasterUserPassword"]).startswith("{{resolve:secretsmanager:")
    cluster = props["ClusterConfig"]
    assert cluster["ZoneAwarenessEnabled"] is True
    assert cluster["ZoneAwarenessConfig"] == {"AvailabilityZoneCount": 2}
    assert cluster["InstanceCount"] % 2 == 0
    assert len(props["VPCOptions"]["SubnetIds"]) == 2
    # Logs: every kind published to a group of the stack.
    groups = s.of_type("AWS::Logs::LogGroup")
    published = props["LogPublishingOptions"]
    assert set(published) == {"ES_APPLICATION_LOGS", "SEARCH_SLOW_LOGS", "INDEX_SLOW_LOGS", "AUDIT_LOGS"}
    for option in published.values():
        assert option["Enabled"] is True
        assert option["CloudWatchLogsLogGroupArn"]["Fn::GetAtt"][0] in groups
    # The engine is the one the tests run against locally (services/opensearch/pom.xml).
    assert props["EngineVersion"] == "OpenSearch_2.19"
