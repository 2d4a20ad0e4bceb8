"""Encryption, access and retention for the stream and the lake (the seed's "Security Configuration").

- a customer-managed KMS key (rotation on), found by alias or created;
- Kinesis server-side encryption with that key, and the stream's retention period;
- the lake bucket: default SSE-KMS (with an S3 Bucket Key, which cuts KMS requests by orders of
  magnitude), public access fully blocked, optionally a policy denying non-TLS requests, and
  lifecycle rules per lake prefix (raw to STANDARD_IA then expiry, errors expiry, aborting stale
  multipart uploads). Prefixes starting with "_" (checkpoints, state, outboxes) are never expired.

Settings come from `config/lake.yaml` (`load_security_config`); every function is idempotent, so
`secure_platform` can run on every bootstrap and deploy. IAM policy documents per role live in
`security/iam/` (`render_policy` fills their placeholders).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl_platform.config import ConfigError, Settings, read_yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PATH = REPO / "config" / "lake.yaml"
IAM_DIR = REPO / "security" / "iam"
MIN_RETENTION_H, MAX_RETENTION_H = 24, 8760
MIN_IA_DAYS = 30  # S3 refuses STANDARD_IA transitions earlier than 30 days after creation


class SecurityConfigError(ConfigError):
    """The security config is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class PrefixLifecycle:
    prefix: str  # lake dataset, e.g. "raw" (the rule filters on "raw/")
    transition_to_ia_days: int | None = None
    expire_days: int | None = None


@dataclass(frozen=True)
class SecurityConfig:
    kms_alias: str = "alias/etl-platform"
    stream_encryption: str = "KMS"
    retention_hours: int = 24
    bucket_encryption: str = "aws:kms"
    block_public_access: bool = True
    deny_insecure_transport: bool = True
    abort_incomplete_multipart_days: int | None = 7
    lifecycle: tuple[PrefixLifecycle, ...] = field(default_factory=tuple)


def _section(data: Mapping[str, Any], key: str, where: str, allowed: set[str]) -> Mapping[str, Any]:
    value = data.get(key, {}) or {}
    if not isinstance(value, Mapping):
        raise SecurityConfigError(f"{where}: `{key}` must be a mapping")
    unknown = set(value) - allowed
    if unknown:
        raise SecurityConfigError(
            f"{where}: unknown key(s) {sorted(unknown)} under `{key}`; allowed: {sorted(allowed)}"
        )
    return value


def _int(value: Any, where: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SecurityConfigError(f"{where} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise SecurityConfigError(
            f"{where} must be in {minimum}..{maximum if maximum is not None else ''}, got {value}"
        )
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise SecurityConfigError(f"{where} must be true or false, got {value!r}")
    return value


def parse_security_config(data: Any, source: str = "lake.yaml") -> SecurityConfig:
    """Validate the parsed YAML; errors name `source` and the offending key."""
    if not isinstance(data, Mapping):
        raise SecurityConfigError(f"{source}: expected a mapping with kms, stream and bucket sections")
    unknown = set(data) - {"kms", "stream", "bucket"}
    if unknown:
        raise SecurityConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}; allowed: bucket, kms, stream")
    kms = _section(data, "kms", source, {"alias"})
    stream = _section(data, "stream", source, {"encryption", "retention_hours"})
    bucket = _section(
        data,
        "bucket",
        source,
        {
            "encryption",
            "block_public_access",
            "deny_insecure_transport",
            "abort_incomplete_multipart_days",
            "lifecycle",
        },
    )
    alias = kms.get("alias", "alias/etl-platform")
    if (
        not isinstance(alias, str)
        or not re.fullmatch(r"alias/[A-Za-z0-9/_-]{1,250}", alias)
        or alias.startswith("alias/aws/")
    ):
        raise SecurityConfigError(f"{source}: kms.alias {alias!r} must look like alias/<name> (not alias/aws/*)")
    encryption = stream.get("encryption", "KMS")
    if encryption not in ("KMS", "NONE"):
        raise SecurityConfigError(f"{source}: stream.encryption {encryption!r} must be KMS or NONE")
    retention = _int(
        stream.get("retention_hours", 24), f"{source}: stream.retention_hours", MIN_RETENTION_H, MAX_RETENTION_H
    )
    bucket_enc = bucket.get("encryption", "aws:kms")
    if bucket_enc not in ("aws:kms", "AES256"):
        raise SecurityConfigError(f"{source}: bucket.encryption {bucket_enc!r} must be aws:kms or AES256")
    abort = bucket.get("abort_incomplete_multipart_days", 7)
    if abort is not None:
        abort = _int(abort, f"{source}: bucket.abort_incomplete_multipart_days", 1)
    rules = []
    lifecycle = bucket.get("lifecycle", {}) or {}
    if not isinstance(lifecycle, Mapping):
        raise SecurityConfigError(f"{source}: bucket.lifecycle must be a mapping of lake prefix -> rule")
    for prefix, rule in lifecycle.items():
        where = f"{source}: bucket.lifecycle.{prefix}"
        if not isinstance(prefix, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", prefix):
            raise SecurityConfigError(
                f"{where}: prefix must be a lake dataset name such as raw or errors "
                "(names starting with '_' hold checkpoints and state and never expire)"
            )
        if not isinstance(rule, Mapping) or not rule:
            raise SecurityConfigError(f"{where}: must be a mapping with transition_to_ia_days and/or expire_days")
        extra = set(rule) - {"transition_to_ia_days", "expire_days"}
        if extra:
            raise SecurityConfigError(
                f"{where}: unknown key(s) {sorted(extra)}; allowed: expire_days, transition_to_ia_days"
            )
        ia = rule.get("transition_to_ia_days")
        expire = rule.get("expire_days")
        if ia is not None:
            ia = _int(ia, f"{where}.transition_to_ia_days", MIN_IA_DAYS)
        if expire is not None:
            expire = _int(expire, f"{where}.expire_days", 1)
        if ia is not None and expire is not None and expire <= ia:
            raise SecurityConfigError(f"{where}: expire_days ({expire}) must be after transition_to_ia_days ({ia})")
        rules.append(PrefixLifecycle(prefix, ia, expire))
    return SecurityConfig(
        kms_alias=alias,
        stream_encryption=encryption,
        retention_hours=retention,
        bucket_encryption=bucket_enc,
        block_public_access=_bool(bucket.get("block_public_access", True), f"{source}: bucket.block_public_access"),
        deny_insecure_transport=_bool(
            bucket.get("deny_insecure_transport", True), f"{source}: bucket.deny_insecure_transport"
        ),
        abort_incomplete_multipart_days=abort,
        lifecycle=tuple(rules),
    )


def load_security_config(path: str | Path | None = None) -> SecurityConfig:
    """`config/lake.yaml` (or ETL_LAKE_CONFIG), validated."""
    path = Path(path or os.environ.get("ETL_LAKE_CONFIG") or DEFAULT_PATH)
    return parse_security_config(read_yaml(path, "lake config", SecurityConfigError), str(path))


# --- KMS ------------------------------------------------------------------------------------------
def ensure_kms_key(kms: Any, alias: str, description: str = "etl-platform stream and lake encryption") -> str:
    """The ARN of the key behind `alias`, creating a symmetric key with rotation and the alias if absent."""
    try:
        return kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"]
    except kms.exceptions.NotFoundException:
        pass
    key = kms.create_key(
        Description=description,
        KeyUsage="ENCRYPT_DECRYPT",
        KeySpec="SYMMETRIC_DEFAULT",
        Tags=[{"TagKey": "managed-by", "TagValue": "etl-platform"}],
    )["KeyMetadata"]
    kms.enable_key_rotation(KeyId=key["KeyId"])
    try:
        kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    except kms.exceptions.AlreadyExistsException:  # lost a race with another bootstrap: use theirs
        kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
        return kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"]
    return key["Arn"]


# --- Kinesis --------------------------------------------------------------------------------------
def _wait_active(kinesis: Any, stream: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        if summary["StreamStatus"] == "ACTIVE":
            return summary
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {stream} still {summary['StreamStatus']} after {timeout_s}s")
        time.sleep(0.2)


def apply_stream_encryption(kinesis: Any, stream: str, kms_key_id: str) -> bool:
    """Server-side encryption with `kms_key_id` (ARN, id or alias); returns True if it changed anything."""
    summary = _wait_active(kinesis, stream)
    if summary.get("EncryptionType") == "KMS" and summary.get("KeyId") == kms_key_id:
        return False
    kinesis.start_stream_encryption(StreamName=stream, EncryptionType="KMS", KeyId=kms_key_id)
    _wait_active(kinesis, stream)
    return True


def set_retention(kinesis: Any, stream: str, hours: int) -> bool:
    """Set the retention period (24..8760 h); returns True if it changed."""
    if not MIN_RETENTION_H <= hours <= MAX_RETENTION_H:
        raise ValueError(f"retention {hours} h is outside Kinesis' {MIN_RETENTION_H}..{MAX_RETENTION_H} h")
    current = _wait_active(kinesis, stream)["RetentionPeriodHours"]
    if current == hours:
        return False
    if hours > current:
        kinesis.increase_stream_retention_period(StreamName=stream, RetentionPeriodHours=hours)
    else:
        kinesis.decrease_stream_retention_period(StreamName=stream, RetentionPeriodHours=hours)
    _wait_active(kinesis, stream)
    return True


# --- S3 -------------------------------------------------------------------------------------------
def lake_roots_of(roots: Iterable[str]) -> tuple[str, ...]:
    """The pipelines' lake roots, validated ("" or "<name>/") and without repeats, in order; none given
    means the default pipeline's ("")."""
    seen: dict[str, None] = {}
    for root in roots:
        if root and (not root.endswith("/") or root.startswith("/") or "//" in root):
            raise ValueError(f"lake root {root!r} must be empty (the default pipeline) or look like <name>/")
        seen.setdefault(root, None)
    return tuple(seen) or ("",)


def lifecycle_rules(config: SecurityConfig, lake_roots: Iterable[str] = ("",)) -> list[dict[str, Any]]:
    """S3 lifecycle rules for the configured prefixes under every pipeline's lake root (plus aborting
    stale multipart uploads, bucket-wide).

    `lake_roots` are the pipelines' `Pipeline.lake_root`s: "" for the default pipeline (rule `etl-raw`
    on `raw/`), "<name>/" for the others (rule `etl-<name>/raw` on `<name>/raw/`). The bootstrap and the
    CDK stack (deploy/cdk) both call this, so the bucket gets the same rules either way."""
    rules: list[dict[str, Any]] = []
    for root in lake_roots_of(lake_roots):
        for item in config.lifecycle:
            rule: dict[str, Any] = {
                "ID": f"etl-{root}{item.prefix}",
                "Filter": {"Prefix": f"{root}{item.prefix}/"},
                "Status": "Enabled",
            }
            if item.transition_to_ia_days is not None:
                rule["Transitions"] = [{"Days": item.transition_to_ia_days, "StorageClass": "STANDARD_IA"}]
            if item.expire_days is not None:
                rule["Expiration"] = {"Days": item.expire_days}
            rules.append(rule)
    if config.abort_incomplete_multipart_days:
        days = config.abort_incomplete_multipart_days
        rules.append(
            {
                "ID": "etl-abort-incomplete-multipart",
                "Filter": {"Prefix": ""},
                "Status": "Enabled",
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days},
            }
        )
    return rules


def tls_only_policy(bucket: str) -> dict[str, Any]:
    """Bucket policy denying every request not made over TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def apply_bucket_security(
    s3: Any,
    bucket: str,
    kms_key_arn: str | None,
    config: SecurityConfig | None = None,
    enforce_tls: bool = False,
    lake_roots: Iterable[str] = ("",),
) -> None:
    """Default encryption, public access block, lifecycle under every lake root (and with `enforce_tls`,
    the TLS-only policy)."""
    config = config or SecurityConfig()
    if config.bucket_encryption == "aws:kms":
        if not kms_key_arn:
            raise ValueError("bucket encryption aws:kms needs a KMS key ARN")
        default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key_arn}
    else:
        default = {"SSEAlgorithm": "AES256"}
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": default,
                    "BucketKeyEnabled": config.bucket_encryption == "aws:kms",
                },
            ]
        },
    )
    if config.block_public_access:
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
    rules = lifecycle_rules(config, lake_roots)
    if rules:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    if enforce_tls and config.deny_insecure_transport:
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(tls_only_policy(bucket)))


# --- everything -----------------------------------------------------------------------------------
@dataclass
class SecurityReport:
    kms_key_arn: str | None
    stream_encryption_changed: bool
    retention_changed: bool
    bucket: str
    lifecycle_rules: int

    def summary(self) -> str:
        return (
            f"kms key {self.kms_key_arn or '-'}; stream encryption "
            f"{'applied' if self.stream_encryption_changed else 'unchanged'}, retention "
            f"{'changed' if self.retention_changed else 'unchanged'}; bucket {self.bucket}: "
            f"{self.lifecycle_rules} lifecycle rules"
        )


def secure_platform(
    settings: Settings,
    config: SecurityConfig | None = None,
    stream: str | None = None,
    bucket: str | None = None,
    log: Callable[[str], None] = print,
    lake_roots: Iterable[str] = ("",),
) -> SecurityReport:
    """Apply the whole security config to the profile's stream and bucket (both must exist); the bucket's
    lifecycle rules cover every lake root in `lake_roots` (each pipeline's `lake_root`)."""
    from etl_platform import aws

    config = config or load_security_config()
    stream = stream or settings.stream_name
    bucket = bucket or settings.lake_bucket
    needs_key = config.stream_encryption == "KMS" or config.bucket_encryption == "aws:kms"
    key_arn = None
    if needs_key:
        key_arn = os.environ.get("ETL_KMS_KEY_ARN") or ensure_kms_key(aws.client("kms", settings), config.kms_alias)
    kinesis = aws.client("kinesis", settings)
    encrypted = (
        apply_stream_encryption(kinesis, stream, key_arn) if config.stream_encryption == "KMS" and key_arn else False
    )
    retention = set_retention(kinesis, stream, config.retention_hours)
    lake_roots = lake_roots_of(lake_roots)
    apply_bucket_security(
        aws.client("s3", settings), bucket, key_arn, config, enforce_tls=settings.tls, lake_roots=lake_roots
    )
    report = SecurityReport(key_arn, encrypted, retention, bucket, len(lifecycle_rules(config, lake_roots)))
    log(f"security: {report.summary()}")
    return report


# --- IAM policy documents -------------------------------------------------------------------------
PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z:]+)\}")
PLACEHOLDERS = {
    "AWS::Region": "region, e.g. us-east-1 (AWS_REGION)",
    "AWS::AccountId": "12-digit account id",
    "StreamName": "the Kinesis stream (ETL_STREAM_NAME)",
    "LakeBucket": "the lake bucket (ETL_LAKE_BUCKET)",
    "LakeRoot": (
        "a pipeline's lake root (Pipeline.lake_root): empty for the default pipeline, <name>/ for the others; "
        "documents using it are rendered once per pipeline with that pipeline's StreamName"
    ),
    "KmsKeyId": "id of the KMS key encrypting stream and bucket (the last part of ETL_KMS_KEY_ARN)",
    "KmsAlias": "the key's alias, e.g. alias/etl-platform (config/lake.yaml kms.alias)",
    "AlertTopicName": "SNS topic name of ETL_ALERT_SNS_TOPIC_ARN",
    "OpenSearchDomain": "Amazon OpenSearch Service domain name",
    "EcsCluster": "ECS cluster the run launcher starts run tasks in",
    "EcsTaskDefinitionFamily": "task definition family of the run tasks",
    "EcsLogGroup": "CloudWatch Logs group of the run tasks",
    "EcrRepository": "ECR repository of the code location image",
    "SecretPrefix": "Secrets Manager name prefix of the platform's secrets",
    "RolePrefix": "name prefix of the platform's IAM roles (e.g. etl-platform)",
    "LeaseTable": "the consumers' DynamoDB lease table (ETL_LEASE_TABLE)",
    "MskCluster": "name of the MSK cluster Kafka pipelines read (ETL_KAFKA_BOOTSTRAP's brokers)",
    "MskClusterUuid": "the MSK cluster's UUID (the last part of its ARN)",
    "KafkaTopicPrefix": "the prefix every Kafka pipeline's topic starts with (e.g. msk-)",
}


def render_policy(name: str, values: Mapping[str, str], directory: Path = IAM_DIR) -> dict[str, Any]:
    """The policy `security/iam/<name>.json` with every ${Placeholder} filled from `values`."""
    text = (directory / f"{name}.json").read_text(encoding="utf-8")
    missing = sorted(set(PLACEHOLDER_RE.findall(text)) - set(values))
    if missing:
        raise ConfigError(f"policy {name}: no value for placeholder(s) {', '.join(missing)}")
    return json.loads(PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text))
