"""Encryption, retention, public access and lifecycle applied to a real stream (kinesis-mock) and bucket
and KMS key (moto), read back from the servers; the pipeline still runs on the encrypted stream."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError

from etl_platform import aws
from etl_platform.ops.security import apply_bucket_security, ensure_kms_key, load_security_config, secure_platform
from etl_platform.stream.consumer import StreamConsumer
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix
from tests.integration.pipeline_helpers import assert_same_results, lake_rows, one_pass

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def kms(settings):
    return aws.client("kms", settings)


@pytest.fixture
def config(unique_name):
    return dataclasses.replace(load_security_config(), kms_alias=f"alias/{unique_name}", retention_hours=72)


def test_kms_key_by_alias_is_created_once(kms, unique_name):
    arn = ensure_kms_key(kms, f"alias/{unique_name}")
    assert ensure_kms_key(kms, f"alias/{unique_name}") == arn
    key_id = arn.rsplit("/", 1)[1]
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True
    assert kms.describe_key(KeyId=f"alias/{unique_name}")["KeyMetadata"]["Arn"] == arn


def test_secure_platform_reads_back(kinesis, s3, kms, settings, stream, bucket, config):
    logs = []
    report = secure_platform(settings, config, stream=stream, bucket=bucket, log=logs.append)

    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    assert summary["EncryptionType"] == "KMS"
    assert summary["KeyId"] == report.kms_key_arn
    assert summary["RetentionPeriodHours"] == 72
    assert report.kms_key_arn == kms.describe_key(KeyId=config.kms_alias)["KeyMetadata"]["Arn"]

    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": report.kms_key_arn,
    }
    assert rule["BucketKeyEnabled"] is True
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["etl-raw"]["Filter"] == {"Prefix": "raw/"}
    assert rules["etl-raw"]["Transitions"] == [{"Days": 30, "StorageClass": "STANDARD_IA"}]
    assert rules["etl-raw"]["Expiration"] == {"Days": 365}
    assert rules["etl-errors"]["Expiration"] == {"Days": 90}
    assert rules["etl-abort-incomplete-multipart"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert len(rules) == report.lifecycle_rules

    # New objects are encrypted with the key by default.
    s3.put_object(Bucket=bucket, Key="raw/probe.txt", Body=b"x")
    head = s3.head_object(Bucket=bucket, Key="raw/probe.txt")
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", report.kms_key_arn)

    # Idempotent: a second run changes nothing.
    again = secure_platform(settings, config, stream=stream, bucket=bucket, log=logs.append)
    assert (again.stream_encryption_changed, again.retention_changed) == (False, False)
    assert "unchanged" in logs[-1]

    # Retention goes down as well as up.
    secure_platform(
        settings, dataclasses.replace(config, retention_hours=24), stream=stream, bucket=bucket, log=logs.append
    )
    assert kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["RetentionPeriodHours"] == 24


def test_tls_only_policy_refuses_plain_http(s3, kms, bucket, unique_name, config):
    """moto enforces bucket policies: the local (plain-HTTP) client is refused once the policy is on."""
    arn = ensure_kms_key(kms, config.kms_alias)
    apply_bucket_security(s3, bucket, arn, config, enforce_tls=True)
    try:
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket=bucket, Key="raw/plain-http.txt", Body=b"x")
        assert err.value.response["Error"]["Code"] in ("AccessDenied", "403")
    finally:
        s3.delete_bucket_policy(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="raw/plain-http.txt", Body=b"x")  # without the policy it works again


def test_pipeline_runs_on_the_encrypted_stream_and_bucket(kinesis, s3, settings, stream, bucket, config, leases):
    secure_platform(settings, config, stream=stream, bucket=bucket, log=lambda _: None)
    start = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
    KinesisProducer(kinesis, stream).send(demo_mix(200, seed=5, start=start, users=5))
    StreamConsumer(kinesis, s3, bucket, stream, leases).drain()
    assert_same_results(lake_rows(s3, bucket, "processed"), one_pass(kinesis, stream))
